"""Lesion and background patches from prepared mammograms: the patch-classifier data of Shen et al.'s recipe.

``python -m project.mammo.patches --data PREPARED --out DIR [--size 224] [--per-lesion 10] [--background 10]
[--jitter 0.25] [--min-breast 0.6] [--seed 0]``

``PREPARED`` is a prepared folder (``manifest.csv`` with ``image``, ``patient``, ``png`` and, when
present, ``fold``; ``lesions.csv`` with ``image``, a ``severity`` or ``cancer`` column, an optional
``class``, and either ``x, y, radius`` or ``x0, y0, x1, y1`` in the prepared image's pixels), as
``python -m project.adapters.minimias`` writes it. For each located lesion ``--per-lesion`` square
patches are taken around its centre, shifted at random by up to ``--jitter`` of the patch side;
each image also gives ``--background`` patches centred at random inside the breast (the ROI mask
of :func:`project.mammo.roi.breast_mask`), at least ``--min-breast`` breast, touching no lesion.
Images with a finding that has no location give no background (it could hold the finding).
Patches are written as ``DIR/patches/<image>_<k>.png`` and listed in ``DIR/patches.csv``
(patch, image, patient, fold, label = background / benign / malignant, class, cancer, cx, cy);
``DIR/patches.json`` records the settings. Everything is deterministic for a seed.
:func:`load_patches` reads such a folder back as layout records for the patch-classifier task
(``project.tasks.mammo_patch``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from project.data.layout import Problem, Sample, Scan
from project.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_text, read_csv_rows
from project.mammo.prepare import encode_png
from project.mammo.roi import breast_mask

BACKGROUND = "background"
PATCH_LABELS = (BACKGROUND, "benign", "malignant")
PATCH_COLUMNS = ("patch", "image", "patient", "fold", "label", "class", "cancer", "cx", "cy")
PATCH_TABLE, PATCH_SETTINGS_FILE = "patches.csv", "patches.json"
MAX_TRIES_PER_PATCH = 50


class PatchDataError(ValueError):
    """A prepared folder or lesion table that cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class Lesion:
    """A finding's centre and box (x0, y0, x1, y1) in image pixels, and its patch label."""

    cx: float
    cy: float
    box: tuple[float, float, float, float]
    label: str
    kind: str = ""

    @classmethod
    def from_circle(cls, x: float, y: float, radius: float, label: str, kind: str = "") -> Lesion:
        return cls(x, y, (x - radius, y - radius, x + radius, y + radius), label, kind)

    @classmethod
    def from_box(cls, x0: float, y0: float, x1: float, y1: float, label: str, kind: str = "") -> Lesion:
        return cls((x0 + x1) / 2, (y0 + y1) / 2, (x0, y0, x1, y1), label, kind)


@dataclass(frozen=True)
class PatchSettings:
    size: int = 224
    per_lesion: int = 10
    background: int = 10
    jitter: float = 0.25
    min_breast: float = 0.6
    seed: int = 0


@dataclass
class Patch:
    pixels: np.ndarray
    cx: int
    cy: int
    label: str
    kind: str = ""


def crop_patch(image: np.ndarray, cx: int, cy: int, size: int) -> np.ndarray:
    """The size x size square centred at (cx, cy); what lies outside the image is 0."""
    x0, y0 = cx - size // 2, cy - size // 2
    out = np.zeros((size, size), dtype=image.dtype)
    h, w = image.shape
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + size), min(h, y0 + size)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def _square(cx: int, cy: int, size: int) -> tuple[int, int, int, int]:
    return cx - size // 2, cy - size // 2, cx - size // 2 + size, cy - size // 2 + size


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def lesion_centres(lesion: Lesion, count: int, settings: PatchSettings, shape: tuple[int, int],
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Patch centres around the lesion's centre, shifted by up to jitter·size, inside the image."""
    h, w = shape
    shift = settings.jitter * settings.size
    offsets = rng.uniform(-shift, shift, size=(count, 2))
    return [(int(np.clip(round(lesion.cx + dx), 0, w - 1)), int(np.clip(round(lesion.cy + dy), 0, h - 1)))
            for dx, dy in offsets]


def background_centres(mask: np.ndarray, lesions: Sequence[Lesion], count: int, settings: PatchSettings,
                       rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to `count` centres inside the breast whose patch is min_breast breast and touches no lesion."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    inside = cv2.integral((mask > 0).astype(np.uint8))
    area = settings.size * settings.size
    h, w = mask.shape
    found: list[tuple[int, int]] = []
    for pick in rng.integers(0, len(xs), size=count * MAX_TRIES_PER_PATCH):
        cx, cy = int(xs[pick]), int(ys[pick])
        x0, y0, x1, y1 = _square(cx, cy, settings.size)
        if any(_overlaps((x0, y0, x1, y1), lesion.box) for lesion in lesions):
            continue
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        breast = inside[cy1, cx1] - inside[cy0, cx1] - inside[cy1, cx0] + inside[cy0, cx0]
        if breast >= settings.min_breast * area:
            found.append((cx, cy))
            if len(found) == count:
                break
    return found


def extract_patches(image: np.ndarray, lesions: Sequence[Lesion], settings: PatchSettings,
                    rng: np.random.Generator, background: bool = True) -> list[Patch]:
    """Lesion patches (per_lesion each) then background patches (none when `background` is False)."""
    patches = [Patch(crop_patch(image, cx, cy, settings.size), cx, cy, lesion.label, lesion.kind)
               for lesion in lesions
               for cx, cy in lesion_centres(lesion, settings.per_lesion, settings, image.shape, rng)]
    if background and settings.background:
        mask, _ = breast_mask(image)
        patches += [Patch(crop_patch(image, cx, cy, settings.size), cx, cy, BACKGROUND)
                    for cx, cy in background_centres(mask, lesions, settings.background, settings, rng)]
    return patches


# --------------------------------------------------------------------------- prepared folders


def _read_csv(path: Path, needed: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise PatchDataError(f"{path}: not found")
    return read_csv_rows(path, needed, PatchDataError)


def _number(row: dict[str, str], column: str, where: str) -> float:
    try:
        return float(row[column])
    except (KeyError, TypeError, ValueError):
        raise PatchDataError(f"{where}: {column} {row.get(column)!r} is not a number") from None


def _lesion_label(row: dict[str, str], where: str) -> str:
    severity = (row.get("severity") or "").strip().lower()
    if severity in ("benign", "malignant"):
        return severity
    cancer = (row.get("cancer") or "").strip()
    if cancer in ("0", "1"):
        return "malignant" if cancer == "1" else "benign"
    raise PatchDataError(f"{where}: needs severity benign/malignant or cancer 0/1")


def read_lesions(path: Path) -> tuple[dict[str, list[Lesion]], set[str]]:
    """Located lesions by image, and the images that have a finding without a location."""
    located: dict[str, list[Lesion]] = {}
    unlocated: set[str] = set()
    for line, row in enumerate(_read_csv(path, ["image"]), start=2):
        where, label, kind = f"{path}:{line}", _lesion_label(row, f"{path}:{line}"), row.get("class") or ""
        if row.get("x0"):
            box = [_number(row, c, where) for c in ("x0", "y0", "x1", "y1")]
            lesion = Lesion.from_box(*box, label=label, kind=kind)
        elif row.get("x"):
            lesion = Lesion.from_circle(*(_number(row, c, where) for c in ("x", "y", "radius")), label=label, kind=kind)
        else:
            unlocated.add(row["image"])
            continue
        located.setdefault(row["image"], []).append(lesion)
    return located, unlocated


def write_patches(data: str | os.PathLike, out: str | os.PathLike, settings: PatchSettings) -> Counter[str]:
    """Patches of every image of the prepared folder `data` into `out`; counts by label."""
    data, out = Path(data), Path(out)
    manifest = _read_csv(data / "manifest.csv", ["image", "patient", "png"])
    located, unlocated = read_lesions(data / "lesions.csv")
    rows, counts = [], Counter()
    for line, entry in enumerate(tqdm(manifest, desc="patches", unit="img", disable=None), start=2):
        image = cv2.imread(str(data / entry["png"]), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim != 2:
            raise PatchDataError(f"{data / 'manifest.csv'}:{line}: {data / entry['png']} is not a grey image")
        rng = np.random.default_rng([settings.seed, line])
        patches = extract_patches(image, located.get(entry["image"], []), settings, rng,
                                  background=entry["image"] not in unlocated)
        for k, patch in enumerate(patches):
            name = f"patches/{entry['image']}_{k:03d}.png"
            atomic_write_bytes(out / name, encode_png(patch.pixels))
            rows.append([name, entry["image"], entry["patient"], entry.get("fold", ""), patch.label, patch.kind,
                         str(int(patch.label == "malignant")), str(patch.cx), str(patch.cy)])
            counts[patch.label] += 1
    atomic_write_csv(out / PATCH_TABLE, PATCH_COLUMNS, rows)
    atomic_write_text(out / PATCH_SETTINGS_FILE, json.dumps({"data": str(data), **asdict(settings)}, indent=1) + "\n")
    return counts


def _patch_sample(root: Path, row: dict[str, str], where: str) -> Sample | Problem:
    path = root / row["patch"]
    if not path.is_file():
        return Problem(path, "missing", f"listed in {where} but not found")
    if row["label"] not in PATCH_LABELS:
        return Problem(path, "label", f"{where}: label {row['label']!r} is not one of {PATCH_LABELS}")
    fold = (row.get("fold") or "").strip()
    if fold and not fold.isdigit():
        return Problem(path, "fold", f"{where}: fold {fold!r} is not a whole number")
    return Sample(path=path, label=PATCH_LABELS.index(row["label"]), group=row["patient"] or None,
                  fold=int(fold) if fold else None, extra={"image": row["image"], "class": row.get("class") or ""})


def load_patches(root: str | os.PathLike) -> Scan:
    """The patches of a folder written by :func:`write_patches` (label index into PATCH_LABELS, the
    patient as group, the image's fold), and the rows that cannot be used."""
    root = Path(root)
    table = root / PATCH_TABLE
    rows = _read_csv(table, ["patch", "image", "patient", "label"])
    scan = Scan()
    for line, row in enumerate(rows, start=2):
        item = _patch_sample(root, row, f"{table}:{line}")
        (scan.problems if isinstance(item, Problem) else scan.samples).append(item)
    return scan


def patch_size(root: str | os.PathLike) -> int:
    """The side of the patches of a folder written by :func:`write_patches` (its patches.json)."""
    path = Path(root) / PATCH_SETTINGS_FILE
    try:
        return int(json.loads(path.read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PatchDataError(f"{path}: cannot read the patch size ({exc})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.mammo.patches",
                                     description="Lesion and background patches from a prepared mammography folder.")
    parser.add_argument("--data", type=Path, required=True, help="prepared folder (manifest.csv, lesions.csv)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    defaults = PatchSettings()
    parser.add_argument("--size", type=int, default=defaults.size, help="patch side in pixels")
    parser.add_argument("--per-lesion", type=int, default=defaults.per_lesion, help="patches per lesion")
    parser.add_argument("--background", type=int, default=defaults.background, help="background patches per image")
    parser.add_argument("--jitter", type=float, default=defaults.jitter, help="largest shift, share of the side")
    parser.add_argument("--min-breast", type=float, default=defaults.min_breast,
                        help="least breast share of a background patch")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    settings = PatchSettings(args.size, args.per_lesion, args.background, args.jitter, args.min_breast, args.seed)
    try:
        counts = write_patches(args.data, args.out, settings)
    except PatchDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{sum(counts.values())} patches in {args.out / 'patches.csv'}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
