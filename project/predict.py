"""Batch inference from self-describing checkpoints: ensembles, flip TTA, bad-file tolerance, CSV output."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from project.data.imageio import ImageReadError
from project.data.layout import Box
from project.data.submission import write_probability_csv
from project.data.transforms import Preprocess, Preprocessor, to_tensor
from project.fileio import atomic_write_csv, read_csv_rows
from project.models.checkpoint import CheckpointConfig, load_checkpoint
from project.runtime import autocast_dtype, make_loader
from project.tasks import AuxiliaryColumn, Task, create_task

ERRORS_FILE = "run_errors.csv"


@dataclass
class Member:
    """One checkpoint of an ensemble, with the task it names."""

    model: torch.nn.Module
    config: CheckpointConfig
    preprocess: Preprocess
    path: Path
    task: Task = field(init=False)

    def __post_init__(self) -> None:
        self.task = create_task(self.config.task, self.config.labels, AuxiliaryColumn.from_dict(self.config.auxiliary))


@dataclass
class Predictions:
    """Ensemble-mean probabilities of the readable images, and why the others were skipped; `member_probs`:
    each member's own [members, images, labels]; `aux`: the mean of the auxiliary head's probabilities over
    the members that have the head (None where none has)."""

    names: list[str] = field(default_factory=list)
    probs: np.ndarray | None = None
    member_probs: np.ndarray | None = None
    aux: np.ndarray | None = None
    aux_head: AuxiliaryColumn = field(default_factory=AuxiliaryColumn)
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
    auxiliary_head(members)
    return members


def auxiliary_head(members: Sequence[Member]) -> AuxiliaryColumn:
    """The auxiliary head the members that have one share (empty where none has one)."""
    heads = {member.task.aux for member in members if member.task.aux.classes}
    if len(heads) > 1:
        raise ValueError(f"the members' auxiliary heads differ ({sorted(h.to_dict()['column'] for h in heads)} "
                         f"or their classes); they cannot be averaged")
    return heads.pop() if heads else AuxiliaryColumn()


Frame = tuple[tuple[int, int, int, int], tuple[int, int]]
"""What maps a preprocessed image back onto its file: the CutBlack bounds and the file's (height, width)."""


class ImageFolderDataset(Dataset):
    """Preprocessed images for prediction; a bad file yields its error instead of a tensor. `boxes`: each
    image's lesion box, which a lesion-crop preprocessing crops to. `framed`: each item also carries its
    Frame (a localiser's input, project.localise), else None."""

    def __init__(
        self, paths: Sequence[Path], preprocess: Preprocess, boxes: Sequence[Box | None] | None = None,
        framed: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        self.preprocess = preprocess
        self.preprocessor = Preprocessor(preprocess)
        self.framed = framed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None, Frame | None]:
        path = self.paths[index]
        frame = None
        try:
            if self.framed:
                image, bounds, shape = self.preprocessor.framed(path)
                frame = bounds, shape
            else:
                image, _ = self.preprocessor(path, self.boxes[index] if self.preprocess.lesion_crop else None)
        except ImageReadError as exc:
            return index, None, exc.cause, None
        except (ValueError, OSError, cv2.error) as exc:
            return index, None, f"cannot preprocess ({type(exc).__name__}: {exc})", None
        return index, to_tensor(image, self.preprocess.mean, self.preprocess.std), None, frame


def collate_images(items: list[tuple[int, torch.Tensor | None, str | None, Frame | None]]):
    """(indices of the readable images, their stacked tensors or None, [(index, error)], their frames)."""
    good = [(i, t, f) for i, t, _, f in items if t is not None]
    bad = [(i, e) for i, _, e, _ in items if e is not None]
    images = torch.stack([t for _, t, _ in good]) if good else None
    return [i for i, _, _ in good], images, bad, [f for _, _, f in good]


def _member_probs(
    member: Member, images: torch.Tensor, tta: bool, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The task's probabilities [B, len(labels)] and the auxiliary head's (or None), averaged over the views."""
    views = [images, images.flip(-1)] if tta else [images]
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = [member.model(view) for view in views]
    probs = torch.stack([member.task.probabilities(view) for view in logits]).mean(0)
    if not member.task.aux.classes:
        return probs, None
    aux = torch.stack([torch.softmax(member.task.auxiliary_logits(view).float(), dim=1) for view in logits]).mean(0)
    return probs, aux


def _groups_by_preprocess(members: Sequence[Member]) -> list[list[int]]:
    """The members' positions, grouped so that members sharing preprocessing share one pass over the images."""
    groups: dict[str, list[int]] = {}
    for position, member in enumerate(members):
        groups.setdefault(repr(member.preprocess), []).append(position)
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
    boxes: Sequence[Box | None] | None = None,
) -> Predictions:
    """Ensemble-mean probabilities for every readable image in `paths`; `boxes` (one per path, from a
    localiser or the labels) is what members trained with --lesion-crop crop to."""
    croppers = [member.path.name for member in members if member.preprocess.lesion_crop]
    if croppers and boxes is None:
        raise ValueError(f"{', '.join(croppers)}: trained on lesion crops (--lesion-crop); prediction needs each "
                         "image's lesion box: give a localiser (run.py --localiser) or a box file (run.py --boxes)")
    started = time.perf_counter()
    dtype = autocast_dtype("auto", device)
    width = len(members[0].config.labels)
    member_probs = np.zeros((len(members), len(paths), width), dtype=np.float64)
    head = auxiliary_head(members)
    aux_sums = np.zeros((len(paths), len(head.classes)), dtype=np.float64)
    errors: dict[int, str] = {}
    groups = _groups_by_preprocess(members)
    for group in groups:
        dataset = ImageFolderDataset(paths, members[group[0]].preprocess, boxes)
        loader = make_loader(dataset, batch_size, workers, collate_fn=collate_images)
        for indices, images, bad, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=len(paths) == 0):
            errors.update(bad)
            if images is None:
                continue
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            for position in group:
                probs, aux = _member_probs(members[position], images, tta, dtype)
                member_probs[position, indices] = probs.cpu().numpy()
                if aux is not None:
                    aux_sums[indices] += aux.cpu().numpy()
    good = [i for i in range(len(paths)) if i not in errors]
    carriers = sum(bool(member.task.aux.classes) for member in members)
    return Predictions(
        names=[paths[i].name for i in good],
        probs=member_probs[:, good].mean(axis=0).astype(np.float32),
        member_probs=member_probs[:, good].astype(np.float32),
        aux=(aux_sums[good] / carriers).astype(np.float32) if carriers else None,
        aux_head=head,
        errors={paths[i].name: reason for i, reason in sorted(errors.items())},
        seconds=time.perf_counter() - started,
    )


def read_lesions(path: Path) -> dict[str, str]:
    """{image file name: lesion id} from a CSV with `image` and `lesion` columns (blank lesions left out)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: lesion file not found")
    lesion_of: dict[str, str] = {}
    for line, row in enumerate(read_csv_rows(path, ("image", "lesion"), ValueError), start=2):
        image, lesion = (row["image"] or "").strip(), (row["lesion"] or "").strip()
        if lesion and lesion_of.setdefault(image, lesion) != lesion:
            raise ValueError(f"{path}: line {line}: {image} is given lesions {lesion_of[image]} and {lesion}")
    return lesion_of


def lesion_keys(names: Sequence[str], lesion_of: Mapping[str, str]) -> list[tuple[str, str]]:
    """The lesion each image shows; an image `lesion_of` does not name is a lesion of its own."""
    return [("lesion", lesion_of[name]) if name in lesion_of else ("image", name) for name in names]


def average_over_lesions(predictions: Predictions, lesion_of: Mapping[str, str]) -> Predictions:
    """Each image's probabilities (each member's, and auxiliary ones) replaced by the mean over the readable
    images of its lesion, as a reader grades a lesion from all its views."""
    index: dict[tuple[str, str], int] = {}
    group = np.array([index.setdefault(key, len(index)) for key in lesion_keys(predictions.names, lesion_of)],
                     dtype=np.int64)

    def mean_within(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        sums = np.zeros((len(index), values.shape[1]), dtype=np.float64)
        np.add.at(sums, group, values)
        return (sums / np.bincount(group, minlength=len(index))[:, None])[group].astype(values.dtype)

    members = None if predictions.member_probs is None else np.stack(
        [mean_within(probs) for probs in predictions.member_probs])
    return replace(predictions, probs=mean_within(predictions.probs), member_probs=members,
                   aux=mean_within(predictions.aux))


def ensemble_thresholds(members: Sequence[Member]) -> dict[str, float]:
    """Decision thresholds by label: the mean of the members' tuned ones (0.5 for a member without one)."""
    labels = members[0].config.labels
    tuned = [label for label in labels if any(label in m.config.thresholds for m in members)]
    return {label: float(np.mean([m.config.thresholds.get(label, 0.5) for m in members])) for label in tuned}


def write_predictions(out_dir: Path, predictions: Predictions, members: Sequence[Member], id_style: str) -> Path:
    """The ensemble's decisions in its task's submission file (cla_pre.csv, fea_pre.csv, ...), atomically."""
    task = members[0].task
    return task.write_submission(out_dir, predictions.names, predictions.probs, ensemble_thresholds(members), id_style)


def write_probabilities(out_dir: Path, predictions: Predictions, members: Sequence[Member], id_style: str) -> Path:
    """<task>_prob.csv: the ensemble's probabilities (and derived scores) in the submission's row order, then
    the auxiliary head's as `<column>_<class>`."""
    task = members[0].task
    path = Path(out_dir) / f"{task.name}_prob.csv"
    columns = task.probability_columns(predictions.probs)
    if predictions.aux is not None:
        head = predictions.aux_head
        columns |= {f"{head.column}_{name}": predictions.aux[:, i] for i, name in enumerate(head.classes)}
    write_probability_csv(path, predictions.names, columns, id_style)
    return path


def write_errors(out_dir: Path, errors: dict[str, dict[str, str]]) -> None:
    """run_errors.csv (always written, so a stale one never survives) and one stderr line per file."""
    rows = [(kind, name, reason) for kind, by_name in errors.items() for name, reason in by_name.items()]
    for kind, name, reason in rows:
        print(f"skipped {kind}/{name}: {reason}", file=sys.stderr)
    atomic_write_csv(out_dir / ERRORS_FILE, ["folder", "img_name", "reason"], rows)

