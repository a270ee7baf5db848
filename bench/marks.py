"""Burnt-in mark removal on real data: how many images it touches, how much of each, how fast.

    python bench/marks.py [--dataset NAME=FOLDER ...] [--limit N] [--figure OUT.png] [--out table.csv]

For each dataset folder (default: BUS-BRA ``Images/`` and BrEaST's images, without its masks, under
``../shared/data``) every image is decoded with ``project.data.imageio.read_image`` and passed to
``project.data.marks.remove_marks``; the table gives the images, those with at least one pixel
changed ("touched"), the median and largest percentage of pixels changed among the touched
images, and the median milliseconds per image of the removal alone (decode excluded).
``--figure`` writes a before/after picture of three touched images per dataset (the most changed,
the median and the least changed), each pair side by side with the changed pixels outlined in red
on the right, as a 64-colour PNG.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.data.imageio import read_image  # noqa: E402
from project.data.layout import is_image_name  # noqa: E402
from project.data.marks import remove_marks  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATASETS = {
    "BUS-BRA": SHARED / "busbra-dev" / "Images",
    "BrEaST": SHARED / "breast-lesions-usg" / "BrEaST-Lesions_USG-images_and_masks",
}
COLUMNS = ("dataset", "images", "touched", "median_pct_changed", "max_pct_changed", "ms_per_image")
FIGURE_HEIGHT = 200


def dataset_images(folder: Path) -> list[Path]:
    """Images of a dataset folder, masks (``*_tumor``, ``*_other*``) left out."""
    return sorted(p for p in folder.iterdir() if is_image_name(p) and "_tumor" not in p.stem and "_other" not in p.stem)


def measure(paths: Sequence[Path]) -> tuple[dict[str, float], list[tuple[float, Path]]]:
    """Table columns for one dataset, and (fraction changed, path) of every touched image."""
    touched, times = [], []
    for path in paths:
        image = read_image(path)
        start = time.perf_counter()
        cleaned = remove_marks(image)
        times.append(time.perf_counter() - start)
        changed = float((cleaned != image).any(axis=2).mean())
        if changed > 0:
            touched.append((changed, path))
    percents = [100 * c for c, _ in touched] or [0.0]
    row = {"images": len(paths), "touched": len(touched), "median_pct_changed": float(np.median(percents)),
           "max_pct_changed": max(percents), "ms_per_image": 1000 * float(np.median(times))}
    return row, touched


def before_after(paths: Sequence[Path], out: Path) -> None:
    """One row per image: the original and the cleaned image with its changed pixels outlined."""
    rows = []
    for path in paths:
        image = read_image(path)
        cleaned = remove_marks(image)
        changed = (cleaned != image).any(axis=2).astype(np.uint8)
        outlined = cleaned.copy()
        contours, _ = cv2.findContours(cv2.dilate(changed, np.ones((5, 5), np.uint8)), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outlined, contours, -1, (255, 0, 0), 1)
        pair = np.hstack([image, np.full((image.shape[0], 6, 3), 255, np.uint8), outlined])
        scale = FIGURE_HEIGHT / pair.shape[0]
        rows.append(cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    width = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 6, 0, width - r.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
            for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.vstack(rows)).quantize(64).save(out, optimize=True)


def figure_choice(touched: Sequence[tuple[float, Path]]) -> list[Path]:
    """The most changed, the median and the least changed of the touched images."""
    ranked = [p for _, p in sorted(touched, key=lambda t: (-t[0], t[1].name))]
    return list(dict.fromkeys(ranked[i] for i in (0, len(ranked) // 2, len(ranked) - 1))) if ranked else []


def _table(rows: Sequence[dict[str, object]]) -> str:
    cells = [COLUMNS] + [tuple(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS)
                         for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=FOLDER",
                        help="a dataset to measure (repeatable; default BUS-BRA and BrEaST under ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each dataset only")
    parser.add_argument("--figure", type=Path, default=None, help="before/after PNG, 3 images per dataset")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = parser.parse_args(argv)
    datasets = dict(item.split("=", 1) for item in args.dataset) if args.dataset else DEFAULT_DATASETS
    rows, touched_of = [], {}
    for name, folder in datasets.items():
        folder = Path(folder)
        if not folder.is_dir():
            print(f"{name}: {folder} not found, skipped", file=sys.stderr)
            continue
        row, touched_of[name] = measure(dataset_images(folder)[: args.limit])
        rows.append({"dataset": name, **row})
    print(_table(rows))
    if args.out:
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    chosen = [p for touched in touched_of.values() for p in figure_choice(touched)]
    if args.figure and chosen:
        before_after(chosen, args.figure)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
