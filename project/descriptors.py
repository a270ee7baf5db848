"""A lesion outline's descriptors after the BI-RADS ultrasound lexicon, and the lexicon model on them.

The lexicon (ACR BI-RADS Atlas, 5th edition, 2013) grades a mass by its shape, orientation, margin,
echo pattern and posterior features. Each descriptor below measures one of them on the lesion's
outline and on the pixels in and around it, as morphometric CAD studies of breast ultrasound do. A
class-balanced logistic regression on them (LexiconModel) is a transparent classifier.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from project.data.imageio import ImageReadError, read_image
from project.data.layout import Sample
from project.data.splits import kfold_indices
from project.data.transforms import read_mask
from project.fileio import atomic_write_text
from project.models.checkpoint import code_version

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


def print_skipped(skipped: dict[str, str]) -> None:
    """Name each image left out, and why, on stderr."""
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)


def cross_fitted_probabilities(
    samples: Sequence[Sample], classes: Sequence[str], splits: int = 5, seed: int = 0
) -> tuple[dict[Path, np.ndarray], dict[str, str]]:
    """Each labelled sample's lexicon-model probabilities, from a model fitted on the other splits' outlines.

    The samples with a class and a usable labelled mask are split `splits` ways as cross-validation folds
    are (project.data.splits.kfold_indices: stratified, one patient's images together), so no lesion's own
    label enters its probabilities; returns the probabilities by image path and, by image name, why the
    others have none.
    """
    labelled = [s for s in samples if s.label is not None]
    described, skipped = describe_labelled(labelled)
    known = [s for s in labelled if s.path.name in described]
    if len(known) < splits:
        raise ValueError(f"{len(known)} images have a class and a usable lesion mask; "
                         f"cross-fitting the lexicon model needs at least {splits}")
    vectors = np.stack([described[s.path.name] for s in known])
    labels = np.array([s.label for s in known])
    probs: dict[Path, np.ndarray] = {}
    for fit, held in kfold_indices(known, splits, seed):
        model = LexiconModel.fit(vectors[fit], labels[fit], classes, seed)
        probs.update(zip([known[i].path for i in held], model.predict_proba(vectors[held]), strict=True))
    return probs, skipped
