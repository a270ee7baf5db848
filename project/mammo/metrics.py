"""Per-breast scoring of screening mammography: prediction ids, mean/max aggregation, pF1, AUC, threshold.

A breast is one ``prediction_id = <patient_id>_<laterality>``; its probability is the mean
(or max) of its images' probabilities and its label the max of its images' labels. The
binarisation threshold is the one that maximises binarised pF-beta (``project.metrics``).

``score_submission`` scores a ``prediction_id,cancer`` submission against a labels CSV that
is either per breast (``prediction_id,cancer``) or per image (``patient_id,laterality,cancer``,
as RSNA's train.csv); ``python -m project.evaluate --pred submission.csv --gt train.csv``
prints it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from project.data.submission import SubmissionError
from project.metrics import best_threshold_pf1, pfbeta

AGGREGATIONS = ("mean", "max")
SUBMISSION_COLUMNS = ("prediction_id", "cancer")
MAX_NAMED = 10


def prediction_id(patient_id: object, laterality: object) -> str:
    """``<patient_id>_<laterality>``, as RSNA's test.csv spells it (``10008_L``)."""
    return f"{str(patient_id).strip()}_{str(laterality).strip().upper()}"


def aggregate(
    ids: Sequence[str], values: Sequence[float] | np.ndarray, how: str = "mean"
) -> tuple[list[str], np.ndarray]:
    """One value per distinct id, in order of first appearance: the mean or the max of its values."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {how!r}")
    values = np.asarray(values, dtype=np.float64)
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} ids for {len(values)} values")
    if len(ids) == 0:
        return [], np.zeros(0)
    unique, first, inverse = np.unique(np.asarray(ids, dtype=object), return_index=True, return_inverse=True)
    if how == "mean":
        reduced = np.bincount(inverse, weights=values) / np.bincount(inverse)
    else:
        reduced = np.full(len(unique), -np.inf)
        np.maximum.at(reduced, inverse, values)
    order = np.argsort(first, kind="stable")
    return [str(unique[i]) for i in order], reduced[order]


def auc_or_nan(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC; NaN when the labels hold only one class."""
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, probs))


def breast_scores(labels: np.ndarray, probs: np.ndarray, beta: float = 1.0) -> dict[str, float]:
    """pF-beta of the probabilities, AUC, the best binarisation threshold and its pF-beta, counts."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    threshold, binarised = best_threshold_pf1(labels, probs, beta) if len(probs) else (0.5, 0.0)
    positives = int(labels.sum())
    return {
        "pf1": pfbeta(labels, probs, beta),
        "auc": auc_or_nan(labels, probs),
        "threshold": threshold,
        "pf1_binarised": binarised,
        "breasts": float(len(labels)),
        "positives": float(positives),
        "positive_rate": positives / len(labels) if len(labels) else 0.0,
    }


def breast_report(
    ids: Sequence[str], labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
    how: str = "mean", beta: float = 1.0,
) -> dict[str, float]:
    """Image-level ids, labels and probabilities -> :func:`breast_scores` of the breasts."""
    _, breast_labels = aggregate(ids, labels, "max")
    _, breast_probs = aggregate(ids, probs, how)
    return breast_scores(breast_labels, breast_probs, beta)


# --------------------------------------------------------------------------- submission files


def _named(names: Sequence[str]) -> str:
    more = len(names) - MAX_NAMED
    return ", ".join(list(names)[:MAX_NAMED]) + (f" ... and {more} more" if more > 0 else "")


def _rows(path: Path, needed: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in reader.fieldnames or []]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    missing = [c for c in needed or () if c not in fields]
    if missing:
        raise SubmissionError(f"{path}: missing column(s) {missing}; header is {fields}")
    return fields, rows


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SubmissionError(f"{path}:{line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SubmissionError(f"{path}:{line}: {column} {text!r} is not finite")
    return value


def read_submission(path: str | os.PathLike) -> dict[str, float]:
    """``prediction_id -> cancer`` of a submission; names the file and line of a bad or repeated row."""
    path = Path(path)
    _, rows = _rows(path, SUBMISSION_COLUMNS)
    values: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        key = row["prediction_id"]
        if not key:
            raise SubmissionError(f"{path}:{line}: empty prediction_id")
        if key in values:
            raise SubmissionError(f"{path}:{line}: prediction_id {key} repeated")
        values[key] = _number(row["cancer"], path, line, "cancer")
    if not values:
        raise SubmissionError(f"{path}: no rows")
    return values


def read_breast_labels(path: str | os.PathLike) -> dict[str, int]:
    """``prediction_id -> cancer`` from a per-breast or per-image labels CSV (max over a breast's rows)."""
    path = Path(path)
    fields, rows = _rows(path, ["cancer"])
    per_image = "patient_id" in fields and "laterality" in fields
    if not per_image and "prediction_id" not in fields:
        raise SubmissionError(f"{path}: needs prediction_id, or patient_id and laterality, beside cancer")
    ids, labels = [], []
    for line, row in enumerate(rows, start=2):
        value = _number(row["cancer"], path, line, "cancer")
        if value not in (0.0, 1.0):
            raise SubmissionError(f"{path}:{line}: cancer {row['cancer']!r} is not 0 or 1")
        ids.append(prediction_id(row["patient_id"], row["laterality"]) if per_image else row["prediction_id"])
        labels.append(value)
    if not ids:
        raise SubmissionError(f"{path}: no rows")
    breast_ids, breast_labels = aggregate(ids, labels, "max")
    return dict(zip(breast_ids, breast_labels.astype(int).tolist()))


def score_submission(pred_path: str | os.PathLike, labels_path: str | os.PathLike, beta: float = 1.0) -> dict:
    """pF-beta and AUC of a submission against the labels; every breast must have exactly one row.

    ``best_threshold`` and ``pf1_at_best_threshold`` are chosen on these very labels: an upper
    bound of what binarising can give, not an estimate.
    """
    predictions, truth = read_submission(pred_path), read_breast_labels(labels_path)
    missing = [k for k in truth if k not in predictions]
    if missing:
        raise SubmissionError(f"{pred_path}: {len(missing)} breast(s) of {labels_path} have no row: {_named(missing)}")
    unknown = [k for k in predictions if k not in truth]
    if unknown:
        raise SubmissionError(f"{pred_path}: {len(unknown)} row(s) for breasts not in {labels_path}: {_named(unknown)}")
    labels = np.array([truth[k] for k in truth])
    probs = np.array([predictions[k] for k in truth])
    scores = breast_scores(labels, probs, beta)
    return {
        "pf1": scores["pf1"],
        "beta": beta,
        "auc": None if math.isnan(scores["auc"]) else scores["auc"],
        "breasts": int(scores["breasts"]),
        "positives": int(scores["positives"]),
        "binary": bool(np.isin(probs, (0.0, 1.0)).all()),
        "best_threshold": scores["threshold"],
        "pf1_at_best_threshold": scores["pf1_binarised"],
    }


def format_submission_report(result: dict) -> str:
    """The lines ``project.evaluate`` prints for a mammography submission."""
    auc = "undefined (one class)" if result["auc"] is None else f"{result['auc']:.4f}"
    name = "pF1" if result["beta"] == 1 else f"pF{result['beta']:g}"
    kind = "binary" if result["binary"] else "probabilities"
    return "\n".join([
        f"{name}      {result['pf1']:.4f}   ({result['breasts']} breasts, {result['positives']} with cancer; "
        f"submitted {kind})",
        f"  AUC {auc}",
        f"  best threshold on these labels {result['best_threshold']:.4f} -> {name} "
        f"{result['pf1_at_best_threshold']:.4f} (tuned on the scored data: optimistic)",
    ])
