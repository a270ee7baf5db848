"""The challenge's prediction files (cla_pre.csv, fea_pre.csv) and the probability files beside them."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from project.data.classes import FEATURE_TASKS
from project.fileio import atomic_write_csv, numeric_order_key

CLA_FILE = "cla_pre.csv"
FEA_FILE = "fea_pre.csv"
ID_STYLES = ("name", "index")


class SubmissionError(ValueError):
    """A prediction or ground-truth CSV that cannot be used as it is."""


def _ordered(names: Sequence[str]) -> list[str]:
    return sorted(names, key=numeric_order_key)


def _id_column(id_style: str) -> str:
    if id_style not in ID_STYLES:
        raise ValueError(f"id_style must be one of {ID_STYLES}, got {id_style!r}")
    return "img_name" if id_style == "name" else "id"


def write_cla_csv(
    path: str | os.PathLike, labels: Mapping[str, int], id_style: str = "name"
) -> None:
    """`labels` maps image file name to class index; rows in numeric order of the stem."""
    names = _ordered(list(labels))
    ids = names if id_style == "name" else range(1, len(names) + 1)
    rows = [(i, int(labels[n])) for i, n in zip(ids, names)]
    atomic_write_csv(path, [_id_column(id_style), "label"], rows)


def write_fea_csv(
    path: str | os.PathLike,
    values: Mapping[str, Sequence[int]],
    tasks: Sequence[str] = FEATURE_TASKS,
    id_style: str = "name",
) -> None:
    """`values` maps image file name to one 0/1 value per task."""
    names = _ordered(list(values))
    ids = names if id_style == "name" else range(1, len(names) + 1)
    rows = [(i, *(int(v) for v in values[n])) for i, n in zip(ids, names)]
    atomic_write_csv(path, [_id_column(id_style), *tasks], rows)


def write_probability_csv(
    path: str | os.PathLike, names: Sequence[str], columns: Mapping[str, Sequence[float]], id_style: str = "name"
) -> None:
    """One row per image in the submission's order: its id, then each column's value (6 decimals)."""
    row_of = {name: index for index, name in enumerate(names)}
    ordered = _ordered(list(names))
    ids = ordered if id_style == "name" else range(1, len(ordered) + 1)
    rows = [(i, *(f"{float(values[row_of[n]]):.6f}" for values in columns.values())) for i, n in zip(ids, ordered)]
    atomic_write_csv(path, [_id_column(id_style), *columns], rows)


def read_prediction_csv(path: str | os.PathLike, columns: Sequence[str]) -> dict[str, list[int]]:
    """Rows keyed by `img_name`; names the file and row for any malformed or duplicated row."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("img_name", *columns) if c not in header]
        if missing:
            raise SubmissionError(f"{path}: missing column(s) {missing}; header is {header}")
        rows: dict[str, list[int]] = {}
        for line_no, row in enumerate(reader, start=2):
            name = (row["img_name"] or "").strip()
            if name in rows:
                raise SubmissionError(f"{path}:{line_no}: duplicated img_name {name!r}")
            try:
                rows[name] = [int(row[c]) for c in columns]
            except (TypeError, ValueError) as exc:
                raise SubmissionError(f"{path}:{line_no}: non-integer value in {row}") from exc
    return rows
