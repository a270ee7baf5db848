"""BUS-BRA to the challenge layout: four BI-RADS class folders, YOLO boxes, patient groups and folds.

``python -m project.adapters.busbra --src ../shared/data/busbra-dev --out DIR [--link MODE | --copy]``

Dataset (cite it wherever results on it are shown):
W. Gómez-Flores, M. J. Gregorio-Calas, W. C. A. Pereira, "BUS-BRA: A Breast Ultrasound Dataset
for Assessing Computer-aided Diagnosis Systems", Medical Physics 51(4):3110, 2024.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from project.adapters.common import (
    LINK_MODES,
    AdapterError,
    add_link_arguments,
    check_out,
    dataset_yaml,
    image_size,
    place_image,
    run_conversion,
    yolo_box,
)
from project.data.layout import CONFIG_FILE, class_folder_name, label_line
from project.fileio import atomic_write_csv, atomic_write_text, numeric_order_key

CLASSES: tuple[str, ...] = ("2", "3", "4", "5")
CSV_FILE = "bus_data.csv"
IMAGE_DIR = "Images"
MASK_DIR = "Masks"  # mask_<number>-<side>.png beside bus_<number>-<side>.png
METADATA_FILE = "metadata.csv"
# BUS-BRA images one lesion per case: a case's -l and -r images are two views of it (their BI-RADS agree in
# 639 of the 640 two-image cases of folds 1-4), so the lesion column repeats the case for run.py --lesions.
METADATA_COLUMNS = ("image", "patient", "lesion", "fold", "pathology", "histology", "device", "side")
REQUIRED_COLUMNS = ("ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX")
PATHOLOGIES = frozenset({"benign", "malignant"})
BOX_TOLERANCE_PX = 1.0  # BBOX is MATLAB-style (1-based), so it may end one pixel past the image
CITATION = (
    'W. Gómez-Flores, M. J. Gregorio-Calas, W. C. A. Pereira, "BUS-BRA: A Breast Ultrasound Dataset '
    'for Assessing Computer-aided Diagnosis Systems", Medical Physics 51(4):3110, 2024.'
)


BusbraError = AdapterError  # the name this module's callers know


@dataclass(frozen=True)
class SizeMismatch:
    """An image whose real size differs from the Width/Height of its CSV row."""

    image_id: str
    csv_size: tuple[int, int]
    real_size: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.image_id}: CSV says {self.csv_size[0]}x{self.csv_size[1]}, image is " \
               f"{self.real_size[0]}x{self.real_size[1]} (box normalised by the image)"


@dataclass
class ConversionSummary:
    """What convert_busbra wrote."""

    out: Path
    images: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    per_fold: dict[str, int] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)  # how images were placed: symlink, hardlink, copy
    masks: int = 0
    size_mismatches: list[SizeMismatch] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.out}: {self.images} images",
            "  classes " + ", ".join(f"BI-RADS {k}: {v}" for k, v in self.per_class.items()),
            "  folds " + ", ".join(f"{k}: {v}" for k, v in self.per_fold.items()),
            "  placed " + ", ".join(f"{k}: {v}" for k, v in self.placed.items()),
            f"  {self.masks} lesion masks",
            f"  {len(self.size_mismatches)} image(s) whose size differs from bus_data.csv",
        ]
        return "\n".join(lines + [f"    {m}" for m in self.size_mismatches])


@dataclass(frozen=True)
class Row:
    """One validated row of bus_data.csv."""

    image_id: str
    patient: str
    birads: str
    pathology: str
    histology: str
    device: str
    side: str
    csv_size: tuple[int, int]
    bbox: tuple[float, float, float, float]
    fold: str


def _field(raw: dict[str, str], column: str) -> str:
    return (raw.get(column) or "").strip()


def _parse_row(raw: dict[str, str], where: str) -> Row:
    missing = [c for c in REQUIRED_COLUMNS if not _field(raw, c)]
    if missing:
        raise BusbraError(f"{where}: empty column(s) {missing}")
    birads, pathology = _field(raw, "BIRADS"), _field(raw, "Pathology").lower()
    if birads not in CLASSES:
        raise BusbraError(f"{where}: BIRADS {birads!r} is not one of {list(CLASSES)}")
    if pathology not in PATHOLOGIES:
        raise BusbraError(f"{where}: Pathology {pathology!r} is not one of {sorted(PATHOLOGIES)}")
    try:
        csv_size = (int(_field(raw, "Width")), int(_field(raw, "Height")))
        bbox = tuple(float(v) for v in json.loads(_field(raw, "BBOX")))
    except (ValueError, TypeError) as exc:
        raise BusbraError(f"{where}: bad Width/Height/BBOX ({exc})") from None
    if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
        raise BusbraError(f"{where}: BBOX must be [x, y, width, height] with a positive size, got {list(bbox)}")
    return Row(
        image_id=_field(raw, "ID"), patient=_field(raw, "Case"), birads=birads, pathology=pathology,
        histology=_field(raw, "Histology"), device=_field(raw, "Device"), side=_field(raw, "Side"),
        csv_size=csv_size, bbox=bbox, fold=_field(raw, "kFold"),
    )


def read_rows(csv_path: Path) -> list[Row]:
    """Rows of bus_data.csv, checked; IDs must be unique."""
    if not csv_path.is_file():
        raise BusbraError(f"{csv_path}: not found (is --src the BUS-BRA folder?)")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise BusbraError(f"{csv_path}: missing column(s) {absent}; header is {reader.fieldnames}")
        rows = [_parse_row(raw, f"{csv_path}:{line}") for line, raw in enumerate(reader, start=2)]
    repeated = [i for i, n in Counter(r.image_id for r in rows).items() if n > 1]
    if repeated:
        raise BusbraError(f"{csv_path}: repeated ID(s) {repeated[:10]}")
    if not rows:
        raise BusbraError(f"{csv_path}: no rows")
    return rows


def class_folder(birads: str) -> str:
    return class_folder_name(birads)


def _dataset_yaml() -> str:
    config = {"classes": list(CLASSES), "metadata": METADATA_FILE, "group_column": "patient", "fold_column": "fold"}
    return dataset_yaml(config, f"BUS-BRA converted by project.adapters.busbra. Cite: {CITATION}")


def mask_source(src: Path, image_id: str) -> Path:
    """The lesion mask of an image: Masks/mask_0001-l.png for bus_0001-l."""
    return src / MASK_DIR / f"mask_{image_id.removeprefix('bus_')}.png"


def convert_busbra(src: Path, out: Path, link: str = "symlink") -> ConversionSummary:
    """Write `out/train/cla/<k>类/{images,labels,masks}`, `out/dataset.yaml` and `out/metadata.csv` from `src`.

    A mask goes to `masks/<image name>` where `src` has one (the lesion-map head learns from it).
    """
    src, out = Path(src), Path(out)
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    rows = sorted(read_rows(src / CSV_FILE), key=lambda r: numeric_order_key(r.image_id))
    check_out(out)
    summary = ConversionSummary(out=out)
    boxes = []  # every image is checked before anything is written
    for row in rows:
        real_size = image_size(src / IMAGE_DIR / f"{row.image_id}.png", CSV_FILE)
        if real_size != row.csv_size:
            summary.size_mismatches.append(SizeMismatch(row.image_id, row.csv_size, real_size))
        boxes.append(yolo_box(row.bbox, real_size, f"{src / CSV_FILE}: {row.image_id}", BOX_TOLERANCE_PX))
    placed: Counter[str] = Counter()
    metadata = []
    for row, box in zip(rows, boxes):
        source = src / IMAGE_DIR / f"{row.image_id}.png"
        folder = out / "train" / "cla" / class_folder(row.birads)
        placed[place_image(source, folder / "images" / source.name, link)] += 1
        mask = mask_source(src, row.image_id)
        if mask.is_file():
            place_image(mask, folder / "masks" / source.name, link)
            summary.masks += 1
        atomic_write_text(folder / "labels" / f"{row.image_id}.txt", label_line(CLASSES.index(row.birads) + 1, box))
        lesion = row.patient
        metadata.append((source.name, row.patient, lesion, row.fold, row.pathology, row.histology, row.device,
                         row.side))
    atomic_write_csv(out / METADATA_FILE, METADATA_COLUMNS, metadata)
    atomic_write_text(out / CONFIG_FILE, _dataset_yaml())
    summary.images = len(rows)
    summary.per_class = {c: n for c in CLASSES if (n := sum(r.birads == c for r in rows))}
    summary.per_fold = dict(sorted(Counter(r.fold or "none" for r in rows).items()))
    summary.placed = dict(placed)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.adapters.busbra",
        description="Convert BUS-BRA (Images/ + bus_data.csv) into the challenge layout. "
        "Source images are linked or copied, never modified.",
        epilog=f"Cite the dataset: {CITATION}",
    )
    parser.add_argument("--src", type=Path, required=True, help="BUS-BRA folder holding bus_data.csv and Images/")
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    add_link_arguments(parser)
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert_busbra(args.src, args.out, args.link))


if __name__ == "__main__":
    sys.exit(main())
