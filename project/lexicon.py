"""Lesion descriptors after the BI-RADS ultrasound lexicon, measured on a lesion mask, and a classifier on them.

The lexicon (ACR BI-RADS Atlas, 5th edition, 2013) grades a mass by its shape, orientation, margin,
echo pattern and posterior features. Each descriptor below measures one of them on the lesion's
outline and on the pixels in and around it, as morphometric CAD studies of breast ultrasound do. A
class-balanced logistic regression on them is a transparent classifier. `python -m project.lexicon cv`
cross-validates it on a dataset's folds, from the labelled masks or from the maps of each fold's
localiser, alone or averaged with a classifier's report; `fit` stores it for run.py --lexicon; `column`
writes each mask's shape and margin class into the metadata, for a training run's auxiliary head.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from project.data.imageio import ImageReadError, read_image
from project.data.layout import Sample, list_images, load_split
from project.data.transforms import read_mask
from project.fileio import atomic_write_csv, atomic_write_text, read_csv_rows
from project.localise import lesion_probability_maps, peak_region
from project.models.checkpoint import code_version
from project.predict import Predictions, average_over_lesions, load_members
from project.report import (
    ReportError,
    Validation,
    lesions_from_metadata,
    malignancy,
    write_cv_tables,
    write_prediction_files,
)
from project.runfolder import VALIDATION_FILE
from project.runtime import resolve_device

OUTLINE_COLUMN = "outline"  # the metadata column `column` writes
RING_PX = 7  # width of the band of tissue around the lesion that its echo is compared with

DESCRIPTORS = (
    "area_share", "log_area", "depth",  # size and position
    "circularity", "solidity", "ellipse_overlap", "extent", "eccentricity",  # shape
    "height_to_width",  # orientation: above 1 is "not parallel"
    "convexity", "edge_strength", "edge_variation",  # margin
    "echo_mean", "echo_spread", "contrast", "surround_spread",  # echo pattern
    "posterior",  # posterior features: positive is enhancement, negative shadowing
)


def _largest_outline(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea)


Ellipse = tuple[tuple[float, float], tuple[float, float], float]  # OpenCV's (centre, axes, angle)


def _ellipse(outline: np.ndarray, x: int, y: int, w: int, h: int) -> Ellipse:
    """The least-squares ellipse of the outline, or the box's inscribed one for outlines too short to fit."""
    if len(outline) >= 5:
        return cv2.fitEllipse(outline)
    return (x + w / 2, y + h / 2), (float(w), float(h)), 0.0


def _posterior(grey: np.ndarray, x: int, y: int, w: int, h: int) -> float:
    """Mean echo in the lesion-high band below the lesion minus that beside the band (0 where there is none)."""
    rows = slice(min(y + h, grey.shape[0]), min(y + 2 * h, grey.shape[0]))
    below = grey[rows, x:x + w]
    beside = np.concatenate([grey[rows, max(0, x - w):x].ravel(), grey[rows, x + w:x + 2 * w].ravel()])
    if below.size == 0 or beside.size == 0:
        return 0.0
    return float(below.mean() - beside.mean())


def lesion_descriptors(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """DESCRIPTORS of the lesion `mask` (H x W, nonzero inside) on `image` (H x W or H x W x 3, 0-255).

    Only the largest connected part of the mask is described. Raises ValueError for an empty mask.
    """
    grey = (image.mean(axis=2) if image.ndim == 3 else image).astype(np.float32) / 255
    if not np.any(mask):
        raise ValueError("the lesion mask is empty")
    outline = _largest_outline(mask)
    lesion = np.zeros(grey.shape, np.uint8)
    cv2.drawContours(lesion, [outline], -1, 1, thickness=cv2.FILLED)
    inside = lesion.astype(bool)
    area = float(inside.sum())
    perimeter = max(cv2.arcLength(outline, closed=True), 1.0)
    hull = cv2.convexHull(outline)
    x, y, w, h = cv2.boundingRect(outline)
    centre, axes, angle = _ellipse(outline, x, y, w, h)
    fitted = np.zeros_like(lesion)
    cv2.ellipse(fitted, (centre, (max(axes[0], 1.0), max(axes[1], 1.0)), angle), 1, thickness=cv2.FILLED)
    fitted = fitted.astype(bool)
    kernel = np.ones((2 * RING_PX + 1, 2 * RING_PX + 1), np.uint8)
    ring = cv2.dilate(lesion, kernel).astype(bool) & ~inside
    edge = cv2.morphologyEx(lesion, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))[edge]
    surround = grey[ring] if ring.any() else grey[inside]
    minor, major = sorted(axes)
    return {
        "area_share": area / grey.size, "log_area": float(np.log1p(area)), "depth": (y + h / 2) / grey.shape[0],
        "circularity": 4 * np.pi * area / perimeter**2,
        "solidity": area / max(cv2.contourArea(hull), 1.0),
        "ellipse_overlap": float((fitted & inside).sum() / max((fitted | inside).sum(), 1)),
        "extent": area / (w * h),
        "eccentricity": float(np.sqrt(max(0.0, 1 - (minor / major) ** 2))) if major > 0 else 0.0,
        "height_to_width": h / w,
        "convexity": cv2.arcLength(hull, closed=True) / perimeter,
        "edge_strength": float(gradient.mean()), "edge_variation": float(gradient.std() / (gradient.mean() + 1e-6)),
        "echo_mean": float(grey[inside].mean()), "echo_spread": float(grey[inside].std()),
        "contrast": float(surround.mean() - grey[inside].mean()), "surround_spread": float(surround.std()),
        "posterior": _posterior(grey, x, y, w, h),
    }


def descriptor_vector(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    described = lesion_descriptors(image, mask)
    return np.array([described[name] for name in DESCRIPTORS], dtype=np.float64)


def _standardised_logistic_regression(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000,
                                                              random_state=seed))


ABSENT_CLASS_LOGIT = -1e4  # the logit of a class no training lesion had: probability 0


@dataclass
class LexiconModel:
    """A class-balanced multinomial logistic regression on standardised DESCRIPTORS, stored as plain numbers."""

    classes: list[str]
    mean: np.ndarray  # [D] the training descriptors' mean ...
    scale: np.ndarray  # [D] ... and standard deviation
    coef: np.ndarray  # [K, D]
    intercept: np.ndarray  # [K]

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, classes: Sequence[str], seed: int = 0) -> LexiconModel:
        """Fit on descriptor vectors [N, D] and class indices [N] into `classes`."""
        pipeline = _standardised_logistic_regression(seed).fit(vectors, labels)
        scaler, regression = pipeline.named_steps["standardscaler"], pipeline.named_steps["logisticregression"]
        coef, intercept = regression.coef_, regression.intercept_
        if len(regression.classes_) == 2:  # sklearn keeps one logit for two classes: softmax([-z/2, z/2]) = sigmoid(z)
            coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        full_coef = np.zeros((len(classes), vectors.shape[1]))
        full_intercept = np.full(len(classes), ABSENT_CLASS_LOGIT)
        full_coef[regression.classes_], full_intercept[regression.classes_] = coef, intercept
        return cls(list(classes), scaler.mean_, scaler.scale_, full_coef, full_intercept)

    def require_classes(self, classes: Sequence[str], whose: str) -> None:
        """Raise ValueError unless the model grades into `classes` (those of `whose` probabilities it joins)."""
        if self.classes != list(classes):
            raise ValueError(f"the lexicon model's classes {self.classes} are not {whose} {list(classes)}")

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        logits = (vectors - self.mean) / self.scale @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        record = {"kind": "lexicon", "version": code_version(), "classes": self.classes,
                  "descriptors": list(DESCRIPTORS), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                  "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> LexiconModel:
        """Raises ValueError naming the file unless it is a lexicon model of today's DESCRIPTORS."""
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            if record.get("kind") != "lexicon":
                raise ValueError("not a lexicon model (no kind: lexicon)")
            if record["descriptors"] != list(DESCRIPTORS):
                raise ValueError(f"its descriptors {record['descriptors']} are not this version's {list(DESCRIPTORS)}")
            return cls(list(record["classes"]), *(np.asarray(record[k], dtype=np.float64)
                                                   for k in ("mean", "scale", "coef", "intercept")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: cannot load a lexicon model ({exc})") from None


def describe_file(image_path: Path, mask_path: Path) -> np.ndarray:
    """The descriptor vector of an image file's lesion outlined in a mask file of the same size.

    Raises ImageReadError or ValueError naming the file and what is wrong with it (unreadable, another size,
    an empty mask).
    """
    image = read_image(image_path, max_side=None)
    try:
        return descriptor_vector(image, read_mask(mask_path, image.shape[:2]))
    except ValueError as exc:
        raise ValueError(f"{mask_path}: {exc}") from None


def describe_labelled(samples: Sequence[Sample]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Descriptors of each sample's labelled mask by image name, and why the others have none."""
    found, errors = {}, {}
    for sample in tqdm(samples, desc="describing labelled masks", unit="image", leave=False):
        if sample.mask is None:
            errors[sample.path.name] = "no labelled mask"
            continue
        try:
            found[sample.path.name] = describe_file(sample.path, sample.mask)
        except (ImageReadError, ValueError) as exc:
            errors[sample.path.name] = str(exc)
    return found, errors


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
    path = report_fold / "predictions.csv"
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = {row["img_name"]: row for row in csv.DictReader(handle)}
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror})") from None
    missing = sorted(set(names) - set(rows))
    if missing or len(rows) != len(val):
        raise ReportError(f"{path}: scores other images than this fold's ({len(rows)} against {len(val)}; "
                          f"missing {missing[:5]})")
    width = sum(1 for key in next(iter(rows.values())) if key.startswith("prob_"))
    return np.array([[float(rows[n][f"prob_{k}"]) for k in range(width)] for n in names])


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


def _list_skipped(skipped: dict[str, str]) -> None:
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)


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
            _list_skipped(skipped)
            counts = ", ".join(f"{name} {count}" for name, count in sorted(Counter(classes.values()).items()))
            print(f"{args.name}: {counts} ({len(skipped)} images without a usable mask)")
            return 0
        if args.command == "fit":
            used, skipped = fit_dataset(args.data, args.out)
            _list_skipped(skipped)
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
