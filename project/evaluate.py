"""Scoring against ground truth (`python -m project.evaluate`): a challenge prediction folder, or a
mammography submission.csv against a labels CSV (per-breast pF1, project.mammo.metrics)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from project.data.classes import BIRADS_CLASSES, FEATURE_TASKS
from project.data.submission import SubmissionError, read_prediction_csv
from project.fileio import atomic_write_text, numeric_order_key
from project.mammo.metrics import format_submission_report, score_submission
from project.metrics import classification_report, feature_report, overall_score

# Preferred file name first; ground truth may also be stored under the prediction names.
GT_FILES = {"cla": ("cla_gt.csv", "cla_pre.csv"), "fea": ("fea_gt.csv", "fea_pre.csv")}
PRED_FILES = {"cla": ("cla_pre.csv", "cla_gt.csv"), "fea": ("fea_pre.csv", "fea_gt.csv")}
MAX_NAMED = 10


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names, key=numeric_order_key)[:MAX_NAMED])
    more = len(names) - MAX_NAMED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _check_values(rows: dict[str, list[int]], allowed: range, path: Path) -> None:
    bad = [name for name, values in rows.items() if any(v not in allowed for v in values)]
    if bad:
        raise SubmissionError(
            f"{path}: {len(bad)} row(s) with a value outside {allowed.start}..{allowed.stop - 1}: "
            + _name_list([f"{n}={rows[n]}" for n in bad])
        )


def _aligned(
    pred_path: Path, gt_path: Path, columns: Sequence[str], allowed: range
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and truth arrays [N, len(columns)] in the truth's image order."""
    gt = read_prediction_csv(gt_path, columns)
    pred = read_prediction_csv(pred_path, columns)
    _check_values(gt, allowed, gt_path)
    _check_values(pred, allowed, pred_path)
    missing = [n for n in gt if n not in pred]
    if missing:
        raise SubmissionError(
            f"{pred_path}: {len(missing)} image(s) of {gt_path} have no row: {_name_list(missing)}"
        )
    unknown = [n for n in pred if n not in gt]
    if unknown:
        raise SubmissionError(
            f"{pred_path}: {len(unknown)} row(s) for image(s) not in {gt_path}: "
            + _name_list(unknown)
        )
    names = sorted(gt, key=numeric_order_key)
    return np.array([gt[n] for n in names]), np.array([pred[n] for n in names])


def _pred_file(pred_dir: Path, part: str) -> Path:
    path = _find(pred_dir, PRED_FILES[part])
    if path is None:
        raise SubmissionError(f"{pred_dir}: none of {list(PRED_FILES[part])} found")
    return path


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    classes: Sequence[str] = BIRADS_CLASSES,
    tasks: Sequence[str] = FEATURE_TASKS,
) -> dict:
    """Challenge score of each part (cla, fea) the truth folder holds; overall when it holds both."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    result: dict = {}
    cla_gt = _find(gt_dir, GT_FILES["cla"])
    if cla_gt is not None:
        truth, pred = _aligned(_pred_file(pred_dir, "cla"), cla_gt, ["label"], range(len(classes)))
        result["cla"] = {**classification_report(truth[:, 0], pred[:, 0], classes), "n": len(truth)}
    fea_gt = _find(gt_dir, GT_FILES["fea"])
    if fea_gt is not None:
        truth, pred = _aligned(_pred_file(pred_dir, "fea"), fea_gt, tasks, range(2))
        per_task = {task: feature_report(truth[:, i], pred[:, i]) for i, task in enumerate(tasks)}
        score = float(np.mean([report["score"] for report in per_task.values()]))
        result["fea"] = {"score": score, "tasks": per_task, "n": len(truth)}
    if not result:
        raise SubmissionError(
            f"{gt_dir}: no ground truth found (expected {GT_FILES['cla'][0]} or {GT_FILES['fea'][0]})"
        )
    if "cla" in result and "fea" in result:
        return {"overall": overall_score(result["cla"]["score"], result["fea"]["score"]), **result}
    return result


def _format_classification(report: dict) -> list[str]:
    kappa = "undefined" if report["kappa"] is None else f"{report['kappa']:.4f}"
    classes = report["classes"]
    width = max(6, *(len(c) for c in classes))
    lines = [
        f"cla      {report['score']:.4f}   (n={report['n']})",
        f"  accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}"
        f"   quadratic kappa {kappa}",
        f"  {'class':<{width}} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}",
    ]
    for name, stats in report["per_class"].items():
        lines.append(
            f"  {name:<{width}} {stats['precision']:>9.4f} {stats['recall']:>7.4f}"
            f" {stats['f1']:>7.4f} {stats['support']:>8d}"
        )
    lines.append("  confusion matrix (rows = truth, columns = prediction)")
    lines.append("  " + " " * width + "".join(f"{c:>6}" for c in classes))
    for name, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>6d}" for v in row))
    return lines


def _format_features(report: dict) -> list[str]:
    width = max(len(t) for t in report["tasks"])
    lines = [
        f"fea      {report['score']:.4f}   (n={report['n']})",
        f"  {'task':<{width}} {'score':>7} {'accuracy':>8} {'F1':>7}"
        f" {'precision':>9} {'recall':>7} {'positives':>9}",
    ]
    for task, stats in report["tasks"].items():
        lines.append(
            f"  {task:<{width}} {stats['score']:>7.4f} {stats['accuracy']:>8.4f}"
            f" {stats['f1']:>7.4f} {stats['precision']:>9.4f} {stats['recall']:>7.4f}"
            f" {stats['positives']:>9d}"
        )
    return lines


def format_report(result: dict) -> str:
    """The human-readable report printed by the CLI."""
    lines = []
    if "overall" in result:
        lines.append(f"overall  {result['overall']:.4f}")
    if "cla" in result:
        lines += _format_classification(result["cla"])
    if "fea" in result:
        lines += _format_features(result["fea"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.evaluate", description="Challenge score of predictions."
    )
    parser.add_argument("--pred", required=True, type=Path,
                        help="folder with cla_pre.csv / fea_pre.csv, or a mammography submission.csv")
    parser.add_argument("--gt", required=True, type=Path,
                        help="folder with cla_gt.csv / fea_gt.csv, or the mammography labels CSV")
    parser.add_argument(
        "--classes", default=",".join(BIRADS_CLASSES), help="class names in label order (comma-separated)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) < 2:
        parser.error(f"--classes needs at least two names, got {args.classes!r}")
    try:
        if args.pred.is_file():
            result = score_submission(args.pred, args.gt)
            text = format_submission_report(result)
        else:
            result = evaluate_folders(args.pred, args.gt, classes)
            text = format_report(result)
    except SubmissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
