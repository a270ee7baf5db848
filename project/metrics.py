"""The challenge score, the BI-RADS classification report, probabilistic F1 and threshold tuning."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from project.data.classes import FEATURE_TASKS

ACCURACY_WEIGHT = 0.6
F1_WEIGHT = 0.4
CLA_WEIGHT = 0.5
UNKNOWN = -1
MAX_THRESHOLD_CANDIDATES = 256

ScoreFn = Callable[[np.ndarray, np.ndarray], float]


def _weighted(accuracy: float, f1: float) -> float:
    return ACCURACY_WEIGHT * accuracy + F1_WEIGHT * f1


def overall_score(cla: float, fea: float) -> float:
    """overall = 0.5·cla + 0.5·fea."""
    return CLA_WEIGHT * cla + (1.0 - CLA_WEIGHT) * fea


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in the truth or the prediction (scikit-learn's default)."""
    present = np.union1d(np.asarray(y_true), np.asarray(y_pred))
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def classification_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """0.6·accuracy + 0.4·macro-F1; a class absent from both truth and prediction is left out."""
    return float(_weighted(accuracy_score(y_true, y_pred), macro_f1(y_true, y_pred)))


def feature_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """0.6·accuracy + 0.4·F1 of the positive class (1)."""
    positive_f1 = f1_score(y_true, y_pred, pos_label=1, zero_division=0)
    return float(_weighted(accuracy_score(y_true, y_pred), positive_f1))


def feature_task_scores(
    fea_true: np.ndarray, fea_pred: np.ndarray, tasks: Sequence[str] = FEATURE_TASKS
) -> dict[str, float]:
    """Score of each task over its known labels (-1 = unknown); a task with none is left out."""
    fea_true, fea_pred = np.asarray(fea_true), np.asarray(fea_pred)
    if fea_true.shape != fea_pred.shape or fea_true.ndim != 2 or fea_true.shape[1] != len(tasks):
        raise ValueError(
            f"feature arrays must both be [N, {len(tasks)}] for tasks {list(tasks)}; "
            f"got {fea_true.shape} and {fea_pred.shape}"
        )
    scores = {}
    for column, task in enumerate(tasks):
        known = fea_true[:, column] != UNKNOWN
        if known.any():
            scores[task] = feature_score(fea_true[known, column], fea_pred[known, column])
    return scores


def challenge_score(
    cla_true: np.ndarray,
    cla_pred: np.ndarray,
    fea_true: np.ndarray,
    fea_pred: np.ndarray,
    tasks: Sequence[str] = FEATURE_TASKS,
) -> dict[str, float]:
    """overall, cla, fea (mean over the tasks with known labels) and each task's score."""
    task_scores = feature_task_scores(fea_true, fea_pred, tasks)
    if not task_scores:
        raise ValueError("no feature task has a known label; fea is undefined")
    cla = classification_score(cla_true, cla_pred)
    fea = float(np.mean(list(task_scores.values())))
    return {"overall": overall_score(cla, fea), "cla": cla, "fea": fea, **task_scores}


def quadratic_kappa(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float | None:
    """Quadratic-weighted Cohen kappa for the ordinal scale; None where it is undefined (0/0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = cohen_kappa_score(
            y_true, y_pred, labels=list(range(num_classes)), weights="quadratic"
        )
    return None if math.isnan(kappa) else float(kappa)


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Score, accuracy, macro-F1, kappa, per-class precision/recall/F1/support, confusion matrix."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "score": classification_score(y_true, y_pred),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred),
        "kappa": quadratic_kappa(y_true, y_pred, len(class_names)),
        "classes": list(class_names),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def feature_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """One task's score, accuracy and positive-class precision/recall/F1 with the counts."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, pos_label=1, average="binary", zero_division=0
    )
    return {
        "score": feature_score(y_true, y_pred),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "positives": int(np.sum(np.asarray(y_true) == 1)),
        "n": int(len(y_true)),
    }


def pfbeta(labels: np.ndarray, predictions: np.ndarray, beta: float = 1.0) -> float:
    """Probabilistic F-beta of RSNA screening mammography: clipped probabilities as soft counts.

    pTP = sum of the predictions on positives, pFP = sum on negatives, P = pTP / (pTP + pFP),
    R = pTP / #positives, pF-beta = (1 + beta²)·P·R / (beta²·P + R). 0 where it is undefined
    (no positive label, or every prediction 0). With 0/1 predictions it is the ordinary F-beta.
    """
    labels = np.asarray(labels).astype(bool)
    predictions = np.clip(np.asarray(predictions, dtype=np.float64), 0.0, 1.0)
    true_positive = predictions[labels].sum()
    false_positive = predictions[~labels].sum()
    positives = labels.sum()
    if positives == 0 or true_positive + false_positive == 0:
        return 0.0
    precision = true_positive / (true_positive + false_positive)
    recall = true_positive / positives
    if precision + recall == 0:
        return 0.0
    beta2 = beta * beta
    return float((1 + beta2) * precision * recall / (beta2 * precision + recall))


def probabilistic_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """pF1: :func:`pfbeta` with beta 1."""
    return pfbeta(labels, predictions, 1.0)


def _threshold_candidates(prob: np.ndarray) -> np.ndarray:
    """Thresholds giving each distinct binarisation (prob >= t), plus 0.5, at most ~256 of them."""
    values = np.unique(prob)
    if len(values) > MAX_THRESHOLD_CANDIDATES:
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_THRESHOLD_CANDIDATES)))
    midpoints = (values[:-1] + values[1:]) / 2
    above_all = np.nextafter(values[-1], np.inf)
    return np.unique(np.concatenate([values[:1], midpoints, [0.5, above_all]]))


def _best_threshold(y_true: np.ndarray, prob: np.ndarray, score_fn: ScoreFn) -> tuple[float, float]:
    y_true, prob = np.asarray(y_true), np.asarray(prob, dtype=np.float64)
    if len(prob) == 0:
        raise ValueError("cannot choose a threshold on an empty set")
    candidates = _threshold_candidates(prob)
    scores = np.array([score_fn(y_true, (prob >= t).astype(int)) for t in candidates])
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
    pick = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return float(candidates[pick]), float(scores[pick])


def best_threshold_pf1(labels: np.ndarray, predictions: np.ndarray, beta: float = 1.0) -> tuple[float, float]:
    """(threshold, pF-beta) of the binarisation `predictions >= threshold` with the highest pF-beta.

    Ties go to the threshold closest to 0.5.
    """
    return _best_threshold(labels, np.clip(predictions, 0.0, 1.0), functools.partial(pfbeta, beta=beta))


def tune_threshold(
    y_true: np.ndarray, prob: np.ndarray, score_fn: ScoreFn = feature_score
) -> float:
    """Threshold on a positive-class probability (positive when prob >= t) maximising score_fn.

    Ties go to the threshold closest to 0.5.
    """
    return _best_threshold(y_true, prob, score_fn)[0]
