"""Prepared mammography folders as layout records, and the one-channel torch dataset over them.

A prepared folder is what ``python -m project.mammo.prepare`` or ``python -m project.adapters.minimias``
writes: ``manifest.csv`` (``image``, ``patient``, ``laterality``, ``view``, ``label``, ``png`` and,
when present, ``fold``) and the PNGs it names. :func:`load_prepared` reads it into
:class:`~project.data.layout.Sample` records (label 0/1 or None, group = patient, fold, and the
breast's ``prediction_id`` in ``extra``), listing unusable rows as problems;
:class:`MammoDataset` yields ``(tensor [1, H, W], target)`` through the same preprocessing as
prediction (:mod:`project.mammo.preprocess`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from project.data.layout import Problem, Sample, Scan
from project.mammo.metrics import prediction_id
from project.mammo.preprocess import MammoPreprocess, read_prepared, to_tensor

MANIFEST_FILE = "manifest.csv"
REQUIRED_COLUMNS = ("image", "patient", "laterality", "png")
EXTRA_FROM_MANIFEST = ("image", "patient", "laterality", "view")


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
    extra = {k: (row.get(k) or "").strip() for k in EXTRA_FROM_MANIFEST}
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
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise NotAPreparedFolder(f"{manifest}: missing column(s) {missing}")
        rows = list(reader)
    scan = Scan()
    for line, row in enumerate(rows, start=2):
        item = _sample(root, row, f"{manifest}:{line}")
        (scan.problems if isinstance(item, Problem) else scan.samples).append(item)
    return scan


class MammoDataset(Dataset):
    """(normalised one-channel image [1, H, W], target) per sample; `augment` acts on the HxW array."""

    def __init__(self, samples: Sequence[Sample], pre: MammoPreprocess, target: Callable[[Sample], torch.Tensor],
                 augment: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.samples, self.pre, self.target, self.augment = list(samples), pre, target, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = read_prepared(sample.path, self.pre)
        if self.augment is not None:
            image = self.augment(image)
        return to_tensor(np.ascontiguousarray(image), self.pre), self.target(sample)
