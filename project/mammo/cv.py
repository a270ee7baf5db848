"""Cross-validation table of mammography runs, per breast, with each binarisation threshold chosen on its training fold.

``python -m project.mammo.cv --cv RUN_0 RUN_1 ... --out DIR [--data PREPARED]``

A mammography checkpoint stores the threshold tuned on its own validation fold, which flatters that
fold. Here every run's checkpoint predicts its training images and its validation images (the
prepared PNGs through the checkpoint's preprocessing); images become breasts by the checkpoint's
aggregation; the threshold with the best binarised pF1 on the *training* breasts is applied unchanged
to the validation breasts. Per fold: AUC, pF1 of the probabilities, binarised pF1 at that threshold,
the binarised pF1 at the threshold tuned on the validation breasts themselves (an optimistic upper
bound, labelled so) and the training breasts' AUC (how far the model fits its own data). The
summary gives mean ± sd over folds and the AUC of all out-of-fold breasts pooled.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from project.data.layout import Sample
from project.fileio import atomic_write_text
from project.mammo.data import MammoDataset
from project.mammo.metrics import aggregate, auc_or_nan, breast_scores
from project.mammo.preprocess import MammoPreprocess
from project.metrics import best_threshold_pf1, pfbeta
from project.models.checkpoint import load_checkpoint
from project.runfolder import BEST_CHECKPOINT, VALIDATION_FILE, RunFolderError, load_run_args, read_validation_split
from project.runtime import make_loader, resolve_device
from project.tasks import create_task

SUMMARY_COLUMNS = ("auc", "pf1", "pf1_binarised", "pf1_binarised_val_tuned", "train_auc")


@dataclass
class Breasts:
    """Per-breast labels and probabilities of one set of images."""

    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray


@torch.inference_mode()
def image_probabilities(model: torch.nn.Module, dataset: MammoDataset, device: torch.device,
                        batch_size: int = 16) -> np.ndarray:
    """The model's cancer probability for every image of `dataset`, in order."""
    model = model.to(device).eval()
    probs = [torch.sigmoid(model(images.to(device)).float()[:, 0]).cpu()
             for images, _ in make_loader(dataset, batch_size, workers=0)]
    return torch.cat(probs).numpy()


def breasts(samples: Sequence[Sample], probs: np.ndarray, how: str) -> Breasts:
    ids = [s.extra["prediction_id"] for s in samples]
    breast_ids, labels = aggregate(ids, [s.label for s in samples], "max")
    _, breast_probs = aggregate(ids, probs, how)
    return Breasts(breast_ids, labels.astype(int), breast_probs)


def fold_row(fold: str, train: Breasts, val: Breasts) -> dict:
    """The validation figures at the threshold chosen on the training breasts."""
    threshold, _ = best_threshold_pf1(train.labels, train.probs)
    scores = breast_scores(val.labels, val.probs)
    return {
        "fold": fold, "breasts": len(val.labels), "positives": int(val.labels.sum()),
        "auc": scores["auc"], "pf1": scores["pf1"], "threshold": threshold,
        "pf1_binarised": pfbeta(val.labels, (val.probs >= threshold).astype(float)),
        "val_tuned_threshold": scores["threshold"], "pf1_binarised_val_tuned": scores["pf1_binarised"],
        "train_auc": auc_or_nan(train.labels, train.probs),
    }


def run_breasts(run: Path, device: torch.device, data: Path | None = None) -> tuple[Breasts, Breasts]:
    """(training breasts, validation breasts) of one run folder, predicted by its checkpoint."""
    model, config = load_checkpoint(run / BEST_CHECKPOINT, device)
    task = create_task(config.task, config.labels)
    pre = MammoPreprocess.from_dict(config.preprocess)
    root = Path(data or load_run_args(run).data)
    val = read_validation_split(run / VALIDATION_FILE, task, root)
    held_out = {s.path.resolve() for s in val}
    scan, _ = task.load(root)
    train = [s for s in scan.samples if s.path.resolve() not in held_out]
    return tuple(breasts(part, image_probabilities(model, MammoDataset(part, pre, task.target), device),
                         pre.aggregate) for part in (train, val))


def summary_table(rows: pd.DataFrame, pooled_auc: float) -> str:
    """Markdown: mean ± sd over the folds of each figure, and the pooled out-of-fold AUC."""
    cells = [f"{rows[c].mean():.3f} ± {rows[c].std(ddof=1):.3f}" for c in SUMMARY_COLUMNS]
    return "\n".join([
        "| folds | breasts | positives | " + " | ".join(SUMMARY_COLUMNS) + " | pooled AUC |",
        "|---:|---:|---:|" + "---:|" * (len(SUMMARY_COLUMNS) + 1),
        f"| {len(rows)} | {rows['breasts'].sum()} | {rows['positives'].sum()} | " + " | ".join(cells)
        + f" | {pooled_auc:.3f} |",
    ]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.mammo.cv", description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path, nargs="+", required=True, metavar="RUN", help="one mammo run per fold")
    parser.add_argument("--data", type=Path, help="prepared folder (default: each run's --data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for folds.csv and cv.md")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows, pooled = [], []
    try:
        for run in args.cv:
            train, val = run_breasts(run, device, args.data)
            rows.append(fold_row(run.name, train, val))
            pooled.append(val)
    except RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    pooled_auc = auc_or_nan(np.concatenate([b.labels for b in pooled]), np.concatenate([b.probs for b in pooled]))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "folds.csv", table.to_csv(index=False, float_format="%.4f"))
    summary = summary_table(table, pooled_auc)
    atomic_write_text(args.out / "cv.md", summary)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), summary, sep="\n\n", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
