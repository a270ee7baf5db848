"""Cross-validation table of feature-recogniser runs, with each threshold tuned on its own training fold.

``python -m project.feature_report --cv RUN_0 RUN_1 ... --out DIR``

A feature run stores thresholds tuned on its validation fold, which flatters that fold. Here every
run's checkpoint predicts its training images and its validation images (the run.py inference
path); each feature's threshold is tuned on the training predictions and applied unchanged to the
validation fold. The table gives, per feature and fold, the challenge score (0.6·accuracy + 0.4·F1
of the positive class), F1, balanced accuracy and AUC, beside the score at threshold 0.5 and two
baselines computed on the same fold: the training fold's majority value, and a fair coin (its
expected score). Unknown labels are left out of every figure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from project.data.layout import Sample
from project.fileio import atomic_write_text
from project.metrics import feature_score, tune_threshold
from project.predict import load_members, predict_folder
from project.runfolder import BEST_CHECKPOINT, VALIDATION_FILE, RunFolderError, load_run_args, read_validation_split
from project.runtime import resolve_device


def known_values(
    samples: Sequence[Sample], probs: np.ndarray, feature: str, column: int
) -> tuple[np.ndarray, np.ndarray]:
    """(truth, probability) of the samples whose `feature` is known."""
    values = [s.features.get(feature) for s in samples]
    known = np.array([v is not None for v in values])
    truth = np.array([v for v in values if v is not None], dtype=int)
    return truth, probs[known, column]


def coin_score(prevalence: float) -> float:
    """Expected challenge score of a fair coin: accuracy 1/2, F1 = π / (π + 1/2) at prevalence π."""
    return 0.6 * 0.5 + 0.4 * (prevalence / (prevalence + 0.5) if prevalence > 0 else 0.0)


def feature_rows(fold: str, train: tuple[Sequence[Sample], np.ndarray], val: tuple[Sequence[Sample], np.ndarray],
                 features: Sequence[str]) -> list[dict]:
    """One row per feature known in both folds: figures at the training-fold threshold, at 0.5, baselines."""
    rows = []
    for column, feature in enumerate(features):
        y_train, p_train = known_values(*train, feature, column)
        y_val, p_val = known_values(*val, feature, column)
        if len(y_train) == 0 or len(y_val) == 0:
            continue
        threshold = float(tune_threshold(y_train, p_train))
        decided = (p_val >= threshold).astype(int)
        majority = np.full_like(y_val, int(y_train.mean() >= 0.5))
        rows.append({
            "fold": fold, "feature": feature, "n": len(y_val), "positives": int(y_val.sum()),
            "threshold": threshold, "score": feature_score(y_val, decided),
            "f1": f1_score(y_val, decided, zero_division=0),
            "balanced_accuracy": balanced_accuracy_score(y_val, decided),
            "auc": roc_auc_score(y_val, p_val) if 0 < y_val.sum() < len(y_val) else np.nan,
            "score_at_0.5": feature_score(y_val, (p_val >= 0.5).astype(int)),
            "majority_score": feature_score(y_val, majority), "coin_score": coin_score(float(y_val.mean())),
        })
    return rows


def _samples_and_probs(samples: Sequence[Sample], members: list, device: torch.device, desc: str):
    predictions = predict_folder([s.path for s in samples], members, device, workers=0, desc=desc)
    if predictions.errors:
        raise RunFolderError(f"unreadable images: {predictions.errors}")
    return samples, predictions.probs


def run_rows(run: Path, device: torch.device, data: Path | None = None) -> list[dict]:
    """The rows of one run folder: its checkpoint on its training and validation images."""
    members = load_members([run / BEST_CHECKPOINT], device)
    task = members[0].task
    root = Path(data or load_run_args(run).data)
    val = read_validation_split(run / VALIDATION_FILE, task, root)
    held_out = {s.path.resolve() for s in val}
    scan, _ = task.load(root)
    train = [s for s in scan.samples if s.path.resolve() not in held_out]
    return feature_rows(
        run.name, _samples_and_probs(train, members, device, f"{run.name} train"),
        _samples_and_probs(val, members, device, f"{run.name} val"), task.labels,
    )


SUMMARY_COLUMNS = ["score", "f1", "balanced_accuracy", "auc", "score_at_0.5", "majority_score", "coin_score"]


def summary_table(rows: pd.DataFrame) -> str:
    """Markdown: per feature, mean ± sd over the folds of each figure."""
    lines = ["| feature | folds | " + " | ".join(SUMMARY_COLUMNS) + " |", "|---|---:|" + "---:|" * len(SUMMARY_COLUMNS)]
    for feature, group in rows.groupby("feature", sort=False):
        cells = [f"{group[c].mean():.3f} ± {group[c].std(ddof=1):.3f}" for c in SUMMARY_COLUMNS]
        lines.append(f"| {feature} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.feature_report", description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path, nargs="+", required=True, metavar="RUN", help="one feature run per fold")
    parser.add_argument("--data", type=Path, help="dataset root (default: each run's --data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for folds.csv and cv.md")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    try:
        rows = pd.DataFrame([row for run in args.cv for row in run_rows(run, device, args.data)])
    except RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "folds.csv", rows.to_csv(index=False, float_format="%.4f"))
    table = summary_table(rows)
    atomic_write_text(args.out / "cv.md", table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
