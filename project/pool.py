"""Ensembles of saved reports: the mean of several project.report folders' probabilities, fold by fold, scored.

A report keeps each fold's probabilities (fold<k>/predictions.csv), so models whose checkpoints are gone (a
lent machine's runs) or live on other machines can still be averaged, as `project.report --members-from`
averages checkpoints: the same images, the mean of the members' probabilities, then the same metrics. One
report with a lesion column re-scores it per lesion without predicting again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from project.data.layout import LabelError, Sample, load_split
from project.fileio import atomic_write_text
from project.predict import Predictions, average_over_lesions, lesion_keys
from project.report import (
    ReportError,
    Validation,
    calibration,
    lesions_from_metadata,
    malignancy,
    read_prediction_file,
    write_cv_tables,
    write_prediction_files,
)


def report_folds(report: Path) -> list[str]:
    """The fold folders of a report (those with a predictions.csv), in cv.json's order where it has one."""
    report = Path(report)
    folds = sorted(p.parent.name for p in report.glob("*/predictions.csv"))
    if not folds:
        raise ReportError(f"{report}: no <fold>/predictions.csv; is it a project.report --cv folder?")
    cv = report / "cv.json"
    if cv.is_file():
        try:
            listed = [row["fold"] for row in json.loads(cv.read_text(encoding="utf-8")) if row["fold"] in folds]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ReportError(f"{cv}: not a readable cv.json ({exc!r})") from None
        folds = listed + [f for f in folds if f not in listed]
    return folds


def _fold_metrics(report_fold: Path) -> dict:
    path = report_fold / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None


def pooled_probabilities(report_folds: Sequence[Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, labels and the mean probabilities of one fold over several reports of it (the first one's order).

    Refuses folds that score other images, give an image another label, or were already averaged over
    lesions (pool per image, then average the lesions once).
    """
    names, labels, total = read_prediction_file(report_folds[0])
    for fold in report_folds:
        if _fold_metrics(fold).get("lesion_column"):
            raise ReportError(f"{fold / 'metrics.json'}: scored per lesion; pool per-image reports and pass "
                              "--lesion-column to the pool")
    for fold in report_folds[1:]:
        theirs, their_labels, probs = read_prediction_file(fold)
        row_of = {name: i for i, name in enumerate(theirs)}
        if set(row_of) != set(names):
            raise ReportError(f"{fold / 'predictions.csv'}: {len(set(row_of) ^ set(names))} image(s) differ from "
                              f"{report_folds[0] / 'predictions.csv'}; pooled reports must score the same fold")
        order = [row_of[n] for n in names]
        if probs.shape[1] != total.shape[1] or not np.array_equal(their_labels[order], labels):
            raise ReportError(f"{fold / 'predictions.csv'}: other classes or labels than "
                              f"{report_folds[0] / 'predictions.csv'}")
        total = total + probs[order]
    return names, labels, total / len(report_folds)


def _load_dataset(data: Path) -> tuple[dict[str, Sample], list[str]]:
    """The dataset's labelled samples by image name, and its classes."""
    try:
        scan, config = load_split(data)
    except (LabelError, OSError) as exc:
        raise ReportError(f"{data}: cannot read the dataset ({exc})") from None
    return {s.path.name: s for s in scan.samples}, list(config.classes)


def _dataset_samples(names: Sequence[str], labels: np.ndarray, by_name: dict[str, Sample], data: Path,
                     source: Path) -> list[Sample]:
    """The dataset's samples of `names`, checked against the labels the report scored them with."""
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ReportError(f"{source}: {len(missing)} image(s) not in {data}, e.g. {missing[:3]}")
    wrong = [n for n, y in zip(names, labels) if by_name[n].label != y]
    if wrong:
        raise ReportError(f"{source}: {len(wrong)} image(s) carry another label in {data}, e.g. {wrong[:3]}")
    return [by_name[n] for n in names]


def pool_reports(reports: Sequence[Path], data: Path, out: Path, lesion_column: str | None = None) -> list[dict]:
    """OUT/<fold>/ (predictions.csv, pred/, gt/, metrics.json) and OUT/cv.md, cv.csv, cv.json of the reports'
    mean; every report must hold the same folds."""
    reports, data, out = [Path(r) for r in reports], Path(data), Path(out)
    folds = report_folds(reports[0])
    for report in reports[1:]:
        if set(report_folds(report)) != set(folds):
            raise ReportError(f"{report}: folds {report_folds(report)} differ from {reports[0]}'s {folds}")
    by_name, classes = _load_dataset(data)
    metrics_by_fold, splits = {}, {}
    for fold in folds:
        names, labels, probs = pooled_probabilities([r / fold for r in reports])
        samples = _dataset_samples(names, labels, by_name, data, reports[0] / fold / "predictions.csv")
        lesions = None
        if lesion_column:
            lesion_of = lesions_from_metadata(samples, lesion_column, data)
            probs = average_over_lesions(Predictions(list(names), probs), lesion_of).probs
            lesions = len(set(lesion_keys(names, lesion_of)))
        split = _fold_metrics(reports[0] / fold).get("split", fold)
        validation = Validation(samples=samples, probs=probs, classes=classes, members=[], skipped={}, split=split,
                                data=data, lesions=lesions)
        metrics = {"data": str(data), "split": split, "pooled": [str(r / fold) for r in reports],
                   "lesion_column": lesion_column, "lesions": lesions, "classes": classes, "skipped": {},
                   "cla": write_prediction_files(validation, out / fold), "malignancy": malignancy(validation),
                   "calibration": calibration(probs, labels)}
        atomic_write_text(out / fold / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        metrics_by_fold[fold], splits[fold] = metrics, split
    return write_cv_tables(out, metrics_by_fold, splits, fold_page="metrics.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.pool", description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", metavar="REPORT",
                        help="project.report --cv folders of the same folds, scored per image (one report with "
                             "--lesion-column: that report per lesion)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset root the reports scored")
    parser.add_argument("--out", type=Path, required=True, help="report folder (<fold>/ and cv.md, cv.json)")
    parser.add_argument("--lesion-column", metavar="COLUMN",
                        help="score the images of one lesion with the mean of their pooled probabilities")
    args = parser.parse_args(argv)
    try:
        pool_reports(args.reports, args.data, args.out, args.lesion_column)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "cv.md").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
