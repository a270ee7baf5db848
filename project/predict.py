"""Batch inference from self-describing checkpoints: ensembles, flip TTA, bad-file tolerance, CSV output."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from project.data.imageio import ImageReadError
from project.data.submission import write_cla_csv, write_fea_csv
from project.data.transforms import Preprocess, Preprocessor, to_tensor
from project.engine import autocast_dtype, init_worker
from project.fileio import atomic_write_csv
from project.models.checkpoint import CheckpointConfig, load_checkpoint

ERRORS_FILE = "run_errors.csv"


@dataclass
class Member:
    """One checkpoint of an ensemble."""

    model: torch.nn.Module
    config: CheckpointConfig
    preprocess: Preprocess
    path: Path


@dataclass
class Predictions:
    """Ensemble-mean probabilities of the readable images, and why the others were skipped."""

    names: list[str] = field(default_factory=list)
    probs: np.ndarray | None = None
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def load_members(paths: Sequence[Path], device: torch.device) -> list[Member]:
    """Checkpoints of one task with one label list (an ensemble), on `device`, in eval mode."""
    members = []
    for path in paths:
        model, config = load_checkpoint(path, device)
        members.append(Member(model, config, Preprocess.from_dict(config.preprocess), Path(path)))
    first = members[0].config
    for member in members[1:]:
        if (member.config.task, member.config.labels) != (first.task, first.labels):
            raise ValueError(
                f"{member.path}: task {member.config.task} labels {member.config.labels} differ from "
                f"{members[0].path}: task {first.task} labels {first.labels}; they cannot be ensembled"
            )
    return members


class ImageFolderDataset(Dataset):
    """Preprocessed images for prediction; a bad file yields its error instead of a tensor."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.preprocessor = Preprocessor(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.paths[index]
        try:
            image, _ = self.preprocessor(path)
        except ImageReadError as exc:
            return index, None, exc.cause
        except (ValueError, OSError, cv2.error) as exc:
            return index, None, f"cannot preprocess ({type(exc).__name__}: {exc})"
        return index, to_tensor(image, self.preprocess.mean, self.preprocess.std), None


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, e) for i, _, e in items if e is not None]
    images = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], images, bad


def _member_probs(member: Member, images: torch.Tensor, tta: bool, dtype: torch.dtype | None) -> torch.Tensor:
    """Class probabilities [B, K] or positive-class probabilities [B, T]."""
    views = [images, images.flip(-1)] if tta else [images]
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        probs = torch.stack([torch.softmax(member.model(view).float(), dim=-1) for view in views]).mean(0)
    return probs[..., 1] if member.config.task == "fea" else probs


def _groups_by_preprocess(members: Sequence[Member]) -> list[list[Member]]:
    """Members sharing preprocessing share one pass over the images."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(repr(member.preprocess), []).append(member)
    return list(groups.values())


@torch.inference_mode()
def predict_folder(
    paths: Sequence[Path],
    members: Sequence[Member],
    device: torch.device,
    batch_size: int = 32,
    workers: int = 2,
    tta: bool = False,
    desc: str = "predict",
) -> Predictions:
    """Ensemble-mean probabilities for every readable image in `paths`."""
    started = time.perf_counter()
    dtype = autocast_dtype("auto", device)
    width = len(members[0].config.labels)
    sums = np.zeros((len(paths), width), dtype=np.float64)
    errors: dict[int, str] = {}
    groups = _groups_by_preprocess(members)
    for group in groups:
        loader = DataLoader(
            ImageFolderDataset(paths, group[0].preprocess), batch_size=batch_size, num_workers=workers,
            collate_fn=_collate, pin_memory=device.type == "cuda", worker_init_fn=init_worker,
        )
        for indices, images, bad in tqdm(loader, desc=desc, unit="batch", leave=False, disable=len(paths) == 0):
            errors.update(bad)
            if images is None:
                continue
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            for member in group:
                sums[indices] += _member_probs(member, images, tta, dtype).cpu().numpy()
    good = [i for i in range(len(paths)) if i not in errors]
    return Predictions(
        names=[paths[i].name for i in good],
        probs=(sums[good] / len(members)).astype(np.float32),
        errors={paths[i].name: reason for i, reason in sorted(errors.items())},
        seconds=time.perf_counter() - started,
    )


def ensemble_thresholds(members: Sequence[Member]) -> np.ndarray:
    """Per-task decision thresholds: the mean of the members' tuned thresholds (0.5 where absent)."""
    tasks = members[0].config.labels
    return np.array([np.mean([m.config.thresholds.get(t, 0.5) for m in members]) for t in tasks])


def write_predictions(
    out_dir: Path, kind: str, predictions: Predictions, members: Sequence[Member], id_style: str
) -> Path:
    """cla_pre.csv (argmax class) or fea_pre.csv (probability ≥ threshold), atomically."""
    if kind == "cla":
        labels = predictions.probs.argmax(axis=1)
        path = out_dir / "cla_pre.csv"
        write_cla_csv(path, dict(zip(predictions.names, labels.tolist())), id_style=id_style)
        return path
    values = (predictions.probs >= ensemble_thresholds(members)).astype(int)
    path = out_dir / "fea_pre.csv"
    write_fea_csv(path, dict(zip(predictions.names, values.tolist())), members[0].config.labels, id_style=id_style)
    return path


def write_errors(out_dir: Path, errors: dict[str, dict[str, str]]) -> None:
    """run_errors.csv (always written, so a stale one never survives) and one stderr line per file."""
    rows = [(kind, name, reason) for kind, by_name in errors.items() for name, reason in by_name.items()]
    for kind, name, reason in rows:
        print(f"skipped {kind}/{name}: {reason}", file=sys.stderr)
    atomic_write_csv(out_dir / ERRORS_FILE, ["folder", "img_name", "reason"], rows)

