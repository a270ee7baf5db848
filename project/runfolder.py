"""The run folder, the whole contract between training and what comes after it: file names, args.yaml, val.csv."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import yaml

from project.data.layout import Sample
from project.fileio import atomic_write_csv
from project.tasks.base import Task

ARGS_FILE = "args.yaml"
BEST_CHECKPOINT = "best.safetensors"
RESUME_STATE = "last_state.pt"
SUMMARY_FILE = "summary.csv"
VALIDATION_FILE = "val.csv"
SPLIT_COLUMNS = ("group", "fold")


class RunFolderError(ValueError):
    """A run-folder file that is missing or unreadable; the message names it."""


def load_run_args(run: Path) -> argparse.Namespace:
    """The training arguments saved in RUN/args.yaml."""
    path = Path(run) / ARGS_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: not found; is {run} a run folder written by the trainers?")
    return argparse.Namespace(**(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the dataset root where it lies under it, else absolute."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def write_validation_split(path: Path, samples: Sequence[Sample], task: Task, root: Path) -> None:
    """val.csv: one row per validation sample: file (relative to `root`), its truth as the task writes it,
    group, fold, then the metadata columns."""
    truth = [task.label_columns(sample) for sample in samples]
    label_columns = list(truth[0]) if truth else []
    fixed = ["file", *label_columns, *SPLIT_COLUMNS]
    extras = sorted(set().union(*(sample.extra for sample in samples)) - set(fixed))
    rows = [
        [_relative(sample.path, root), *(labels[c] for c in label_columns),
         "" if sample.group is None else sample.group, "" if sample.fold is None else sample.fold,
         *(sample.extra.get(c, "") for c in extras)]
        for sample, labels in zip(samples, truth)
    ]
    atomic_write_csv(path, [*fixed, *extras], rows)


def _sample(row: dict[str, str], task: Task, root: Path, extras: Sequence[str]) -> Sample:
    return Sample(
        path=root / row["file"],
        group=row["group"] or None,
        fold=int(row["fold"]) if row["fold"] else None,
        extra={column: row[column] for column in extras},
        **task.truth_from_columns(row),
    )


def read_validation_split(path: Path, task: Task, root: Path) -> list[Sample]:
    """The samples val.csv lists, their files under `root` (absolute paths stay as written)."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: not found; it is written when training starts")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in ("file", *SPLIT_COLUMNS) if c not in header]
    if missing:
        raise RunFolderError(f"{path}: missing column(s) {missing}; header is {header}")
    extras = header[header.index("fold") + 1:]
    try:
        return [_sample(row, task, Path(root), extras) for row in rows]
    except (KeyError, ValueError) as exc:
        raise RunFolderError(f"{path}: not a {task.name} split with labels {task.labels}: {exc}") from None
