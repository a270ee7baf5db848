"""The lexicon model's command line: cross-validate it, fit it for run.py, write an outline column.

`python -m project.lexicon cv` cross-validates the lexicon model (project.descriptors) on a dataset's
folds, from the labelled masks or from the maps of each fold's localiser, alone or averaged with a
classifier's report; `fit` stores it for run.py --lexicon; `column` writes each mask's shape and margin
class into the metadata, for a training run's auxiliary head.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from project.data.imageio import ImageReadError, read_image
from project.data.layout import Sample, list_images, load_split
from project.descriptors import (
    DESCRIPTORS,
    LexiconModel,
    describe_file,
    describe_labelled,
    descriptor_vector,
    print_skipped,
)
from project.fileio import atomic_write_csv, atomic_write_text, read_csv_rows
from project.localise import lesion_probability_maps, peak_region
from project.predict import Predictions, average_over_lesions, load_members
from project.report import (
    ReportError,
    Validation,
    lesions_from_metadata,
    malignancy,
    read_prediction_file,
    write_cv_tables,
    write_prediction_files,
)
from project.runfolder import VALIDATION_FILE
from project.runtime import resolve_device

OUTLINE_COLUMN = "outline"  # the metadata column `column` writes


def describe_located(
    samples: Sequence[Sample], localiser: Path, device: torch.device,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Descriptors of the lesion a localiser's map finds in each image (project.localise.peak_region)."""
    member = load_members([localiser], device)[0]
    maps, errors = lesion_probability_maps([s.path for s in samples], member, device)
    found, reasons = {}, {samples[i].path.name: why for i, why in errors.items()}
    for sample, probs in zip(samples, maps, strict=True):
        if probs is None:
            continue
        try:
            found[sample.path.name] = descriptor_vector(read_image(sample.path, max_side=None), peak_region(probs))
        except ValueError as exc:  # a map with no probable pixel outlines nothing
            reasons[sample.path.name] = f"the localiser's map: {exc}"
    return found, reasons


def fit_on(labelled: dict[str, np.ndarray], samples: Sequence[Sample], classes: Sequence[str]) -> LexiconModel:
    """A LexiconModel fitted on the labelled-mask descriptors of those `samples` that have them."""
    known = [s for s in samples if s.path.name in labelled and s.label is not None]
    if not known:
        raise ReportError("no training image with a labelled mask and a class")
    return LexiconModel.fit(np.stack([labelled[s.path.name] for s in known]), np.array([s.label for s in known]),
                            classes)


def fit_dataset(data: Path, out: Path) -> tuple[int, dict[str, str]]:
    """Fit the lexicon model on every labelled mask of a dataset into OUT (JSON); (images used, skipped)."""
    scan, config = load_split(Path(data))
    samples = [s for s in scan.samples if s.label is not None]
    labelled, skipped = describe_labelled(samples)
    fit_on(labelled, samples, config.classes).save(Path(out))
    return len(labelled), skipped


def outline_classes(described: dict[str, np.ndarray]) -> dict[str, str]:
    """Each outline's shape and margin as one class: solidity and convexity, each split at its median over
    these outlines ('oval' or 'irregular', then 'smooth' or 'angular', e.g. 'oval-smooth')."""
    vectors = np.stack(list(described.values()))
    solidity, convexity = (vectors[:, DESCRIPTORS.index(name)] for name in ("solidity", "convexity"))
    shapes = np.where(solidity >= np.median(solidity), "oval", "irregular")
    margins = np.where(convexity >= np.median(convexity), "smooth", "angular")
    return {name: f"{shape}-{margin}" for name, shape, margin in zip(described, shapes, margins, strict=True)}


def add_outline_column(data: Path, column: str = OUTLINE_COLUMN) -> tuple[dict[str, str], dict[str, str]]:
    """Write each labelled mask's `outline_classes` into COLUMN of the dataset's metadata CSV (empty for an
    image without a usable mask), e.g. for the trainer's --aux-column; (class by image, skipped)."""
    scan, config = load_split(Path(data))
    if not config.metadata:
        raise ReportError(f"{data}: dataset.yaml names no metadata CSV to add the column to")
    described, skipped = describe_labelled(scan.samples)
    if not described:
        raise ReportError(f"{data}: no image has a usable lesion mask")
    classes = outline_classes(described)
    path = Path(data) / config.metadata
    rows = read_csv_rows(path, ["image"], ReportError)
    kept = [name for name in rows[0] if name != column] if rows else ["image"]
    atomic_write_csv(path, [*kept, column], ([row[name] for name in kept] + [classes.get(row["image"], "")]
                                            for row in rows))
    return classes, skipped


def describe_outlined(paths: Sequence[Path], masks: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Descriptors by image name of the images whose outline MASKS/<stem>.<any image suffix> exists, and why
    the masks that exist could not be used. An image without a mask is neither."""
    outlines = {path.stem: path for path in list_images(masks)}
    found, errors = {}, {}
    for path in tqdm([p for p in paths if p.stem in outlines], desc="describing outlines", unit="image", leave=False):
        try:
            found[path.name] = describe_file(path, outlines[path.stem])
        except (ImageReadError, ValueError) as exc:
            errors[path.name] = str(exc)
    return found, errors


def average_in(predictions: Predictions, described: dict[str, np.ndarray], model: LexiconModel) -> Predictions:
    """Each described image's probabilities averaged, with equal weight, with the lexicon model's."""
    named = [i for i, name in enumerate(predictions.names) if name in described]
    if not named:
        return predictions
    probs = predictions.probs.copy()
    lexicon = model.predict_proba(np.stack([described[predictions.names[i]] for i in named]))
    probs[named] = (probs[named] + lexicon) / 2
    return replace(predictions, probs=probs.astype(predictions.probs.dtype))


def _fold_samples(samples: Sequence[Sample], root: Path) -> dict[int, list[Sample]]:
    folds: dict[int, list[Sample]] = {}
    for sample in samples:
        if sample.label is not None and sample.fold is not None:
            folds.setdefault(sample.fold, []).append(sample)
    if len(folds) < 2:
        raise ReportError(f"{root}: the lexicon's cross-validation needs the dataset's fold column with two folds "
                          f"or more (found {sorted(folds)})")
    return dict(sorted(folds.items()))


def _report_probs(report_fold: Path, val: Sequence[Sample], names: Sequence[str]) -> np.ndarray:
    """The probabilities a classifier's report (project.report) on the fold `val` gave `names`, in this order."""
    scored, _, probs = read_prediction_file(report_fold)
    row_of = {name: i for i, name in enumerate(scored)}
    missing = sorted(set(names) - set(row_of))
    if missing or len(row_of) != len(val):
        raise ReportError(f"{report_fold / 'predictions.csv'}: scores other images than this fold's "
                          f"({len(row_of)} against {len(val)}; missing {missing[:5]})")
    return probs[[row_of[n] for n in names]]


def cross_validate(
    data: Path, out: Path, localiser_from: Path | None = None, with_report: Path | None = None,
    lesion_column: str | None = None, device: str = "auto",
) -> list[dict]:
    """The lexicon classifier fitted on the labelled masks of all folds but one, scored on that one.

    Fold k (in the order of the dataset's fold numbers) is described by its labelled masks, or by the
    maps of LOCALISER_FROM/fold<k>/best.safetensors; WITH_REPORT/fold<k>/predictions.csv, a
    classifier's report on the same fold, is averaged in with equal weight. Writes OUT/fold<k>/ as
    project.report does (predictions.csv, pred/, gt/, metrics.json) and OUT/cv.md, cv.csv, cv.json.
    """
    data, out = Path(data), Path(out)
    scan, config = load_split(data)
    folds = _fold_samples(scan.samples, data)
    labelled, skipped = describe_labelled([s for fold in folds.values() for s in fold])
    torch_device = resolve_device(device)
    metrics_by_fold, splits = {}, {}
    for k, (fold, val) in enumerate(folds.items()):
        name = f"fold{k}"
        model = fit_on(labelled, [s for other, samples in folds.items() if other != fold for s in samples],
                       config.classes)
        if localiser_from is not None:
            localiser = Path(localiser_from) / name / "best.safetensors"
            _check_localiser_fold(Path(localiser_from) / name, val)
            described, reasons = describe_located(val, localiser, torch_device)
        else:
            described, reasons = {n: labelled[n] for n in (s.path.name for s in val) if n in labelled}, {}
        scored = [s for s in val if s.path.name in described]
        probs = model.predict_proba(np.stack([described[s.path.name] for s in scored]))
        if with_report is not None:
            probs = (probs + _report_probs(Path(with_report) / name, val, [s.path.name for s in scored])) / 2
        if lesion_column:
            lesion_of = lesions_from_metadata(scored, lesion_column, data)
            probs = average_over_lesions(Predictions([s.path.name for s in scored], probs), lesion_of).probs
        fold_skipped = {**{s.path.name: skipped[s.path.name] for s in val if s.path.name in skipped}, **reasons}
        split = f"official fold {fold}, lexicon fitted on folds {[f for f in folds if f != fold]}"
        validation = Validation(samples=scored, probs=probs, classes=list(config.classes), members=[],
                                skipped=fold_skipped, split=split, data=data)
        metrics = {"data": str(data), "split": split, "masks": str(localiser_from or "labelled"),
                   "with_report": str(with_report) if with_report else None, "lesion_column": lesion_column,
                   "classes": list(config.classes), "skipped": fold_skipped,
                   "cla": write_prediction_files(validation, out / name), "malignancy": malignancy(validation)}
        atomic_write_text(out / name / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        metrics_by_fold[name], splits[name] = metrics, split
    return write_cv_tables(out, metrics_by_fold, splits, fold_page="metrics.json")


def _check_localiser_fold(run: Path, val: Sequence[Sample]) -> None:
    """Refuse a localiser whose validation images are not the fold's: it would have trained on them."""
    path = run / VALIDATION_FILE
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            names = {Path(row["file"]).name for row in csv.DictReader(handle)}
    except (OSError, KeyError) as exc:
        raise ReportError(f"{path}: cannot read the localiser's validation images ({exc!r})") from None
    if names != {s.path.name for s in val}:
        raise ReportError(f"{path}: the localiser validated on other images than this fold's; it may have "
                          "trained on the images it would describe")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.lexicon", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cv = commands.add_parser("cv", help="cross-validate on the dataset's folds")
    cv.add_argument("--data", type=Path, required=True, help="dataset root with masks/ folders and a fold column")
    cv.add_argument("--out", type=Path, required=True, help="report folder (fold<k>/ and cv.md, cv.json)")
    cv.add_argument("--localiser-from", type=Path, metavar="DIR",
                    help="describe each fold's lesion from DIR/fold<k>'s lesion map instead of its labelled mask")
    cv.add_argument("--with-report", type=Path, metavar="REPORT",
                    help="average with a project.report --cv folder of the same folds")
    cv.add_argument("--lesion-column", metavar="COLUMN", help="score the images of one lesion with their mean")
    cv.add_argument("--device", default="auto")
    fit = commands.add_parser("fit", help="fit on every labelled mask of a dataset, for run.py --lexicon")
    fit.add_argument("--data", type=Path, required=True, help="dataset root with masks/ folders")
    fit.add_argument("--out", type=Path, required=True, help="the model's JSON file")
    column = commands.add_parser("column", help="write each labelled mask's shape and margin class into the "
                                 "metadata CSV, for the trainer's --aux-column")
    column.add_argument("--data", type=Path, required=True, help="dataset root with masks/ folders and metadata")
    column.add_argument("--name", default=OUTLINE_COLUMN, help="the column's name")
    args = parser.parse_args(argv)
    try:
        if args.command == "column":
            classes, skipped = add_outline_column(args.data, args.name)
            print_skipped(skipped)
            counts = ", ".join(f"{name} {count}" for name, count in sorted(Counter(classes.values()).items()))
            print(f"{args.name}: {counts} ({len(skipped)} images without a usable mask)")
            return 0
        if args.command == "fit":
            used, skipped = fit_dataset(args.data, args.out)
            print_skipped(skipped)
            print(f"fitted on {used} lesion masks ({len(skipped)} images without one) -> {args.out}")
            return 0
        rows = cross_validate(args.data, args.out, args.localiser_from, args.with_report, args.lesion_column,
                              args.device)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mean = rows[-2]
    print(f"macro-F1 {mean['macro_f1']:.4f}, kappa {mean['kappa']:.4f}; the table: {args.out / 'cv.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
