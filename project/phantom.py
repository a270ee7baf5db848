"""Synthetic breast-ultrasound phantom written in the challenge layout that project/data/layout.py reads."""

from __future__ import annotations

import argparse
import inspect
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from project.data.classes import BIRADS_CLASSES, FEATURE_TASKS
from project.data.layout import class_folder_name, label_line
from project.data.submission import write_cla_csv, write_fea_csv
from project.fileio import atomic_write_bytes, atomic_write_text

JPEG_QUALITY = 92
SPLITS = ("train/cla", "train/fea", "testB/cla", "testB/fea")
MIN_SIZE = 48
N_CLASSES = len(BIRADS_CLASSES)
MAX_SUSPICION = len(FEATURE_TASKS) + 1

_ANGLES = np.linspace(-np.pi, np.pi, 720, endpoint=False)
_MIN_ASPECT = 1.25  # long side over short side of every lesion box, so direction is unambiguous
_MAX_OUTLINE_TRIES = 100
_POSTERIOR_GAIN = 0.6  # posterior 0 brightens the tissue behind the lesion by 60 %, 1 darkens it


class LesionFeatures(NamedTuple):
    """The four challenge features; 1 is the suspicious finding for each."""

    boundary: int  # 1 = not circumscribed: blurred edge with spicules
    calcification: int  # 1 = bright specks inside the lesion
    direction: int  # 1 = not parallel: taller than wide
    shape: int  # 1 = irregular: lobulated or star polygon


@dataclass(frozen=True)
class PhantomCase:
    class_index: int
    features: LesionFeatures
    posterior: float


@dataclass(frozen=True)
class PhantomImage:
    pixels: np.ndarray  # (size, size) uint8, grey
    box: tuple[float, float, float, float]  # YOLO cx, cy, w, h of the lesion, normalised
    lesion_mask: np.ndarray  # (size, size) bool
    field_of_view: tuple[int, int, int, int]  # top, bottom, left, right; bottom/right exclusive


class _Job(NamedTuple):
    split: str
    stem: int
    class_index: int
    seed: np.random.SeedSequence


def birads_class(n_suspicious: int, posterior: float) -> int:
    """BI-RADS class index (0..5 = BI-RADS 2, 3, 4A, 4B, 4C, 5) of a phantom lesion.

    suspicion = n_suspicious + posterior, where n_suspicious (0..4) counts the four features
    equal to 1 and posterior in [0, 1) is the lesion's posterior acoustic rating, drawn per
    image and visible behind the lesion (0 = strongest enhancement, 0.5 = none, 1 = strongest
    shadowing); class index = floor(6 * suspicion / 5).
    """
    return min(int(N_CLASSES * (n_suspicious + posterior) / MAX_SUSPICION), N_CLASSES - 1)


def sample_case(class_index: int, rng: np.random.Generator) -> PhantomCase:
    """Draw features and posterior rating for a lesion of a given class.

    The suspicion is uniform over the class's interval [5c/6, 5(c+1)/6); its integer part is
    the number of features set to 1 (which ones is uniform), its fraction the posterior
    rating. With classes drawn evenly this makes every feature 1 in half of the images.
    """
    if not 0 <= class_index < N_CLASSES:
        raise ValueError(f"class_index must be in 0..{N_CLASSES - 1}, got {class_index}")
    low = class_index * MAX_SUSPICION / N_CLASSES
    suspicion = rng.uniform(low, low + MAX_SUSPICION / N_CLASSES)
    n_suspicious = min(int(suspicion), len(FEATURE_TASKS))
    values = np.zeros(len(FEATURE_TASKS), dtype=int)
    values[rng.choice(len(FEATURE_TASKS), size=n_suspicious, replace=False)] = 1
    posterior = suspicion - n_suspicious
    return PhantomCase(
        birads_class(n_suspicious, posterior), LesionFeatures(*values.tolist()), posterior
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _field_of_view(size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    top = round(size * rng.uniform(0.09, 0.13))
    bottom = size - round(size * rng.uniform(0.03, 0.08))
    left = round(size * rng.uniform(0.05, 0.12))
    right = size - round(size * rng.uniform(0.05, 0.12))
    return top, bottom, left, right


def _tissue_echo(
    size: int, fov: tuple[int, int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """Mean echo level: skin line, subcutaneous fat, glandular layer, pectoral muscle."""
    top, bottom = fov[:2]
    x = np.arange(size, dtype=np.float32)[None, :] / size
    depth = (np.arange(size, dtype=np.float32)[:, None] - top) / (bottom - top)

    def wavy(level: float, amplitude: float) -> np.ndarray:
        cycles, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
        return level + amplitude * np.sin(2 * np.pi * cycles * x + phase)

    boundaries = (
        wavy(0.04, 0.005),
        wavy(rng.uniform(0.18, 0.26), 0.04),
        wavy(rng.uniform(0.72, 0.82), 0.05),
    )
    levels = (0.85, rng.uniform(0.22, 0.3), rng.uniform(0.5, 0.6), rng.uniform(0.28, 0.34))
    echo = np.full((size, size), levels[0], dtype=np.float32)
    for boundary, above, below in zip(boundaries, levels, levels[1:]):
        echo += (below - above) * _sigmoid((depth - boundary) / 0.01)
    muscle = _sigmoid((depth - boundaries[-1]) / 0.01)
    echo += 0.06 * muscle * np.sin(2 * np.pi * rng.uniform(25, 40) * (depth + 0.05 * x))
    patches = rng.uniform(0.8, 1.2, (6, 6)).astype(np.float32)
    echo *= cv2.resize(patches, (size, size), interpolation=cv2.INTER_CUBIC)
    return echo * (1.0 - 0.3 * np.clip(depth, 0.0, 1.0))


def _speckle(size: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative speckle with mean 1: the envelope of smoothed complex Gaussian noise."""
    field = rng.standard_normal((2, size, size), dtype=np.float32)
    sigma_x, sigma_y = max(0.5, 1.6 * size / 256), max(0.5, 0.8 * size / 256)
    real, imaginary = (cv2.GaussianBlur(part, (0, 0), sigma_x, sigmaY=sigma_y) for part in field)
    # Rayleigh amplitude under a display compression, which shortens its bright tail.
    amplitude = np.hypot(real, imaginary) ** 0.6
    return amplitude / amplitude.mean()


def _irregular_outline(rng: np.random.Generator) -> np.ndarray:
    """Relative radius per angle of a lobulated blob or a star polygon."""
    if rng.random() < 0.5:
        orders = rng.choice(np.arange(3, 7), size=2, replace=False)
        lobes = [rng.uniform(0.12, 0.2) * np.cos(k * _ANGLES + rng.uniform(0, 2 * np.pi))
                 for k in orders]
        return 1.0 + np.sum(lobes, axis=0)
    points = int(rng.integers(5, 9))
    vertex = np.arange(2 * points)
    vertex_angles = -np.pi + (vertex + rng.uniform(-0.2, 0.2, vertex.size)) * np.pi / points
    vertex_radii = np.where(
        vertex % 2 == 0, rng.uniform(1.05, 1.2, vertex.size), rng.uniform(0.6, 0.75, vertex.size)
    )
    return np.interp(_ANGLES, vertex_angles, vertex_radii, period=2 * np.pi)


def _spiculated_margin(rng: np.random.Generator) -> np.ndarray:
    """Radius added per angle by thin spicules and microlobulation."""
    count = int(rng.integers(8, 14))
    centres = rng.uniform(-np.pi, np.pi, count)
    lengths, widths = rng.uniform(0.2, 0.4, count), rng.uniform(0.03, 0.06, count)
    offsets = np.abs(np.angle(np.exp(1j * (_ANGLES[:, None] - centres))))
    spicules = (lengths * np.clip(1.0 - offsets / widths, 0.0, None)).max(axis=1)
    micro = 0.04 * np.cos(rng.integers(12, 20) * _ANGLES + rng.uniform(0, 2 * np.pi))
    return spicules + micro


def _outline(features: LesionFeatures, rng: np.random.Generator) -> np.ndarray:
    if features.shape:
        radii = _irregular_outline(rng)
    else:
        radii = 1.0 + 0.03 * np.cos(2 * _ANGLES + rng.uniform(0, 2 * np.pi))
    if features.boundary:
        radii = radii + _spiculated_margin(rng)
    return radii


@dataclass(frozen=True)
class _Lesion:
    centre: tuple[float, float]  # x, y in pixels
    axes: tuple[float, float]  # horizontal, vertical semi-axes in pixels
    outline: np.ndarray  # relative radius at each of _ANGLES


def _lesion(
    features: LesionFeatures, size: int, fov: tuple[int, int, int, int], rng: np.random.Generator
) -> _Lesion:
    """Outline whose box follows `direction`, scaled and placed in the glandular layer."""
    long_axis = size * rng.uniform(0.1, 0.16)
    short_axis = long_axis / rng.uniform(1.35, 1.9)
    a, b = (short_axis, long_axis) if features.direction else (long_axis, short_axis)
    for _ in range(_MAX_OUTLINE_TRIES):
        outline = _outline(features, rng)
        xs, ys = a * outline * np.cos(_ANGLES), b * outline * np.sin(_ANGLES)
        width, height = np.ptp(xs), np.ptp(ys)
        long_side, short_side = (height, width) if features.direction else (width, height)
        if long_side >= _MIN_ASPECT * short_side:
            break
    else:
        raise RuntimeError(f"no lesion outline with aspect >= {_MIN_ASPECT} for {features}")
    top, bottom, left, right = fov
    fov_height, fov_width = bottom - top, right - left
    scale = min(1.0, 0.8 * fov_width / width, 0.6 * fov_height / height)
    xs, ys = xs * scale, ys * scale
    centre_x = rng.uniform(left + 0.05 * fov_width - xs.min(), right - 0.05 * fov_width - xs.max())
    centre_y = rng.uniform(top + 0.3 * fov_height - ys.min(), bottom - 0.1 * fov_height - ys.max())
    return _Lesion((centre_x, centre_y), (a * scale, b * scale), outline)


def _signed_distance(lesion: _Lesion, size: int) -> np.ndarray:
    """Approximate distance in pixels inside (> 0) or outside (< 0) the lesion outline."""
    (cx, cy), (a, b) = lesion.centre, lesion.axes
    grid = np.arange(size, dtype=np.float32)
    u, v = (grid[None, :] - cx) / a, (grid[:, None] - cy) / b
    radius = np.interp(np.arctan2(v, u), _ANGLES, lesion.outline, period=2 * np.pi)
    return (radius - np.hypot(u, v)) * math.sqrt(a * b)


def _posterior_factor(lesion_weight: np.ndarray, posterior: float, size: int) -> np.ndarray:
    """Brightening (posterior < 0.5) or shadowing (> 0.5) of the columns below the lesion."""
    below = np.maximum.accumulate(lesion_weight, axis=0) * (1.0 - lesion_weight)
    below = cv2.GaussianBlur(below, (0, 0), max(0.5, 0.01 * size))
    return 1.0 + _POSTERIOR_GAIN * (1.0 - 2.0 * posterior) * below


def _calcifications(lesion: _Lesion, size: int, rng: np.random.Generator) -> np.ndarray:
    """Bright specks (peak 1) scattered over the inner two thirds of the lesion."""
    count = int(rng.integers(4, 10))
    angles = rng.uniform(-np.pi, np.pi, count)
    radial = 0.65 * np.sqrt(rng.uniform(0, 1, count))
    radial *= np.interp(angles, _ANGLES, lesion.outline, period=2 * np.pi)
    (cx, cy), (a, b) = lesion.centre, lesion.axes
    cols = np.clip(np.round(cx + a * radial * np.cos(angles)).astype(int), 0, size - 1)
    rows = np.clip(np.round(cy + b * radial * np.sin(angles)).astype(int), 0, size - 1)
    points = np.zeros((size, size), dtype=np.float32)
    points[rows, cols] = 1.0
    sigma = max(0.6, 0.005 * size)
    specks = cv2.GaussianBlur(points, (0, 0), sigma) * (2 * np.pi * sigma**2)
    return np.clip(specks, 0.0, 1.0) * rng.uniform(0.92, 1.0)


def _annotate(pixels: np.ndarray, fov: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """Burn in a scanner text strip above the field of view and depth ticks beside it."""
    size = pixels.shape[0]
    top, bottom, left, right = fov
    text = (
        f"L{rng.integers(5, 15)}-{rng.integers(3, 6)} {rng.uniform(7, 15):.1f}MHz"
        f"  G{rng.integers(40, 80)}  D{rng.uniform(3, 6):.1f}cm"
    )
    baseline = top - max(2, top // 4)
    cv2.putText(pixels, text, (left, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * size / 256,
                255, 1, cv2.LINE_AA)
    tick_x, tick_length = right + 1, max(2, size // 64)
    for row in np.linspace(top, bottom - 1, int(rng.integers(5, 9))).round().astype(int):
        pixels[row, tick_x:tick_x + tick_length] = 200


def _yolo_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    size_y, size_x = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return ((x0 + x1) / 2 / size_x, (y0 + y1) / 2 / size_y, (x1 - x0) / size_x, (y1 - y0) / size_y)


def render_image(
    features: LesionFeatures, size: int, rng: np.random.Generator, posterior: float = 0.5
) -> PhantomImage:
    """One grey ultrasound-like image of a hypoechoic lesion with the given features."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    fov = _field_of_view(size, rng)
    echo = _tissue_echo(size, fov, rng)
    lesion = _lesion(features, size, fov, rng)
    distance = _signed_distance(lesion, size)
    softness = size * rng.uniform(0.014, 0.024) if features.boundary else 0.4
    weight = _sigmoid(distance / softness).astype(np.float32)
    echo = echo * (1.0 - weight) + rng.uniform(0.06, 0.14) * weight
    image = echo * _posterior_factor(weight, posterior, size) * _speckle(size, rng)
    if features.calcification:
        image = np.maximum(image, _calcifications(lesion, size, rng))
    pixels = np.zeros((size, size), dtype=np.uint8)
    top, bottom, left, right = fov
    pixels[top:bottom, left:right] = np.round(
        np.clip(image[top:bottom, left:right], 0.0, 1.0) * 255
    ).astype(np.uint8)
    _annotate(pixels, fov, rng)
    mask = distance > 0
    return PhantomImage(pixels, _yolo_box(mask), mask, fov)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def class_folder(class_index: int) -> str:
    """The challenge's folder name for a class index: 0 -> '2类', 2 -> '4A类'."""
    return class_folder_name(BIRADS_CLASSES[class_index])


def _split_counts(n_train: int, n_test: int) -> dict[str, int]:
    return {
        "train/cla": (n_train + 1) // 2,
        "train/fea": n_train // 2,
        "testB/cla": (n_test + 1) // 2,
        "testB/fea": n_test // 2,
    }


def _plan(n_train: int, n_test: int, seed: int) -> list[_Job]:
    """Evenly spread, shuffled classes per split; image i of a split seeded by (seed, split, i)."""
    counts = _split_counts(n_train, n_test)
    first_stems = {"train/cla": 1, "train/fea": counts["train/cla"] + 1,
                   "testB/cla": 1, "testB/fea": 1}
    jobs = []
    for split, split_seed in zip(SPLITS, np.random.SeedSequence(seed).spawn(len(SPLITS))):
        plan_seed, images_seed = split_seed.spawn(2)
        count = counts[split]
        classes = np.random.default_rng(plan_seed).permutation(np.arange(count) % N_CLASSES)
        for offset, (class_index, image_seed) in enumerate(zip(classes, images_seed.spawn(count))):
            jobs.append(_Job(split, first_stems[split] + offset, int(class_index), image_seed))
    return jobs


def _check_arguments(out: Path, n_train: int, n_test: int, size: int, seed: int) -> None:
    if n_train < 0 or n_test < 0:
        raise ValueError(f"image counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new --out")


def _write_train_cla(out: Path, job: _Job, case: PhantomCase, image: PhantomImage) -> None:
    folder = out / "train" / "cla" / class_folder(case.class_index)
    atomic_write_bytes(folder / "images" / f"{job.stem}.jpg", encode_jpeg(image.pixels))
    atomic_write_text(folder / "labels" / f"{job.stem}.txt", label_line(case.class_index + 1, image.box))


def _write_train_fea(out: Path, job: _Job, case: PhantomCase, image: PhantomImage) -> None:
    folder = out / "train" / "fea"
    atomic_write_bytes(folder / "images" / f"{job.stem}.jpg", encode_jpeg(image.pixels))
    for task, value in zip(FEATURE_TASKS, case.features):
        atomic_write_text(folder / f"{task}_labels" / f"{job.stem}.txt", label_line(value, image.box))


def generate_phantom(out: Path, n_train: int, n_test: int, size: int, seed: int) -> None:
    """Write a phantom dataset in the challenge layout plus testB ground truth to `out`.

    n_train images are split between train/cla (the first half, rounded up, stems 1..) and
    train/fea (the rest, stems continuing), n_test likewise between testB/cla and testB/fea
    (stems 1.. in each). Classes are spread evenly and shuffled within each split; features
    come from `sample_case` and the class from `birads_class`. Same arguments, same bytes.
    """
    out = Path(out)
    _check_arguments(out, n_train, n_test, size, seed)
    cla_truth: dict[str, int] = {}
    fea_truth: dict[str, LesionFeatures] = {}
    for job in tqdm(_plan(n_train, n_test, seed), desc="phantom", unit="image"):
        rng = np.random.default_rng(job.seed)
        case = sample_case(job.class_index, rng)
        image = render_image(case.features, size, rng, case.posterior)
        if job.split == "train/cla":
            _write_train_cla(out, job, case, image)
        elif job.split == "train/fea":
            _write_train_fea(out, job, case, image)
        else:
            name = f"{job.stem}.jpg"
            atomic_write_bytes(out / job.split / name, encode_jpeg(image.pixels))
            if job.split == "testB/cla":
                cla_truth[name] = case.class_index
            else:
                fea_truth[name] = case.features
    write_cla_csv(out / "testB_gt" / "cla_gt.csv", cla_truth)
    write_fea_csv(out / "testB_gt" / "fea_gt.csv", fea_truth)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m project.phantom",
        description="Write a synthetic breast-ultrasound dataset in the challenge layout, with "
        "testB ground truth in testB_gt/cla_gt.csv and fea_gt.csv.",
        epilog="Class rule: " + inspect.cleandoc(birads_class.__doc__ or "")
        + "\n\nFeature sampling: " + inspect.cleandoc(sample_case.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--n-train", type=int, default=600,
                        help="training images, half in train/cla and half in train/fea")
    parser.add_argument("--n-test", type=int, default=200,
                        help="testB images, half in testB/cla and half in testB/fea")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    args = parser.parse_args(argv)
    try:
        generate_phantom(args.out, args.n_train, args.n_test, args.size, args.seed)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
