"""Prepared mammography folders as layout records, and the one-channel torch dataset over them.

A prepared folder is what ``python -m project.mammo.prepare`` or ``python -m project.adapters.minimias``
writes: ``manifest.csv`` (``image``, ``patient``, ``laterality``, ``view``, ``label``, ``png`` and,
when present, ``fold``) and the PNGs it names. :func:`load_prepared` reads it into
:class:`~project.data.layout.Sample` records (label 0/1 or None, group = patient, fold, the other
manifest columns and the breast's ``prediction_id`` in ``extra``), listing unusable rows as problems;
:class:`MammoDataset` yields ``(tensor [1, H, W], target)`` through the same preprocessing as
prediction (:mod:`project.mammo.preprocess`), augmented in training by :func:`mammo_augment`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from project.data.layout import Problem, Sample, Scan
from project.data.transforms import AugmentConfig, build_augment
from project.fileio import read_csv_rows
from project.mammo.metrics import prediction_id
from project.mammo.preprocess import MammoPreprocess, read_prepared, to_tensor

MANIFEST_FILE = "manifest.csv"
REQUIRED_COLUMNS = ("image", "patient", "laterality", "png")
NOT_METADATA = ("label", "png", "fold")  # Sample fields of their own; every other column goes into `extra`


class NotAPreparedFolder(ValueError):
    """A folder without a usable manifest.csv."""


def _sample(root: Path, row: dict[str, str], where: str) -> Sample | Problem:
    path = root / row["png"]
    if not path.is_file():
        return Problem(path, "missing", f"listed in {where} but not found")
    label = (row.get("label") or "").strip()
    if label not in ("", "0", "1"):
        return Problem(path, "label", f"{where}: label {label!r} is not 0, 1 or empty")
    fold = (row.get("fold") or "").strip()
    if fold and not fold.isdigit():
        return Problem(path, "fold", f"{where}: fold {fold!r} is not a whole number")
    extra = {k: (v or "").strip() for k, v in row.items() if k not in NOT_METADATA}
    extra["prediction_id"] = prediction_id(extra["patient"], extra["laterality"])
    return Sample(path=path, label=int(label) if label else None, group=extra["patient"],
                  fold=int(fold) if fold else None, extra=extra)


def load_prepared(root: str | Path) -> Scan:
    """Samples of a prepared folder in manifest order, and the rows that cannot be used."""
    root = Path(root)
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        raise NotAPreparedFolder(f"{root}: no {MANIFEST_FILE}; prepare the images first "
                                 "(python -m project.mammo.prepare or an adapter)")
    rows = read_csv_rows(manifest, REQUIRED_COLUMNS, NotAPreparedFolder)
    scan = Scan()
    for line, row in enumerate(rows, start=2):
        item = _sample(root, row, f"{manifest}:{line}")
        (scan.problems if isinstance(item, Problem) else scan.samples).append(item)
    return scan


# The training augmentation of a mammogram: the chest wall stays on the left (as prediction puts it), so
# no horizontal flip; a vertical flip, a small affine and brightness/contrast; AugmentConfig fields.
MAMMO_AUGMENT = {"hflip": 0.0, "vflip": 0.5, "affine": 0.5, "shift": 0.05, "scale": 0.1, "rotate": 10.0,
                 "brightness_contrast": 0.5, "blur": 0.0, "coarse_dropout": 0.0, "clahe": 0.0}


class Augment:
    """Albumentations steps on a prepared 8- or 16-bit HxW image, with a stream reseeded per DataLoader worker."""

    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        self.compose = build_augment(config)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        if self.compose is not None:
            self.compose.set_random_seed(seed)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image if self.compose is None else self.compose(image=image)["image"]


def mammo_augment(options: Mapping[str, float], seed: int = 0) -> Augment:
    """:data:`MAMMO_AUGMENT` with `options` (AugmentConfig fields) overriding it."""
    return Augment(AugmentConfig(**{**MAMMO_AUGMENT, **options}), seed)


class MammoDataset(Dataset):
    """(normalised one-channel image [1, H, W], target) per sample; `augment` acts on the HxW array."""

    def __init__(self, samples: Sequence[Sample], pre: MammoPreprocess, target: Callable[[Sample], torch.Tensor],
                 augment: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.samples, self.pre, self.target, self.augment = list(samples), pre, target, augment

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """A DataLoader worker's own augmentation stream (project.runtime.init_worker)."""
        if hasattr(self.augment, "reseed"):
            self.augment.reseed(seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = read_prepared(sample.path, self.pre)
        if self.augment is not None:
            image = self.augment(image)
        return to_tensor(np.ascontiguousarray(image), self.pre), self.target(sample)
