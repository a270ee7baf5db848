"""BrEaST-Lesions_USG to the challenge layout: six BI-RADS folders, boxes from masks, three features, folds.

``python -m project.adapters.breast --src ../shared/data/breast-lesions-usg --out DIR [--folds K] [--link MODE]``

Dataset (CC BY 4.0; cite it wherever results on it are shown):
A. Pawłowska et al., "Curated benchmark dataset for ultrasound based breast lesion analysis",
Scientific Data 11:148, 2024 (data: The Cancer Imaging Archive, BrEaST-Lesions-USG).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

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
from project.data.classes import BIRADS_CLASSES
from project.data.imageio import ImageReadError, read_image
from project.data.layout import CONFIG_FILE, Box, class_folder_name, label_line
from project.fileio import atomic_write_csv, atomic_write_text

CLASSES: tuple[str, ...] = BIRADS_CLASSES
NORMAL = "1"  # BI-RADS 1: no lesion, no mask; reported and left out
IMAGE_DIR = "BrEaST-Lesions_USG-images_and_masks"
METADATA_FILE = "metadata.csv"
METADATA_COLUMNS = (
    "image", "patient", "fold", "birads", "pathology", "verification", "diagnosis", "shape", "margin", "calcifications",
)
REQUIRED_COLUMNS = (
    "CaseID", "Image_filename", "Mask_tumor_filename", "Shape", "Margin", "Calcifications",
    "BIRADS", "Verification", "Diagnosis", "Classification",
)
PATHOLOGIES = frozenset({"benign", "malignant"})
MASK_THRESHOLD = 127
# Challenge feature (1 = the suspicious finding, as in the phantom) <- spreadsheet column and the value
# before any " - " sub-type; None = unknown (no label file). Direction has no column: unknown for all.
FEATURES: dict[str, tuple[str, dict[str, int | None]]] = {
    "boundary": ("Margin", {"circumscribed": 0, "not circumscribed": 1}),
    "calcification": ("Calcifications", {"no": 0, "in a mass": 1, "intraductal": 1, "indefinable": None}),
    "shape": ("Shape", {"oval": 0, "round": 0, "irregular": 1}),
}
CITATION = (
    'A. Pawłowska, A. Ćwierz-Pieńkowska, A. Domalik, D. Jaguś, P. Kasprzak, R. Matkowski, Ł. Fura, A. Nowicki, '
    'N. Żołek, "Curated benchmark dataset for ultrasound based breast lesion analysis", Scientific Data 11:148, '
    "2024 (data: The Cancer Imaging Archive, BrEaST-Lesions-USG)."
)


@dataclass(frozen=True)
class Row:
    """One case of the spreadsheet, checked; `features` is empty for a normal case."""

    case: str
    image: str
    mask: str
    birads: str
    pathology: str
    verification: str
    diagnosis: str
    descriptors: tuple[str, str, str]  # shape, margin, calcifications as written
    features: dict[str, int | None] = field(default_factory=dict)

    @property
    def normal(self) -> bool:
        return self.birads == NORMAL


@dataclass
class ConversionSummary:
    """What convert_breast wrote, and the normal cases it left out."""

    out: Path
    per_class: dict[str, int] = field(default_factory=dict)
    per_feature: dict[str, dict[str, int]] = field(default_factory=dict)
    per_fold: dict[str, int] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)
    normals: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(self.per_class.values())

    def __str__(self) -> str:
        features = "; ".join(
            f"{task} " + ", ".join(f"{k}: {v}" for k, v in counts.items()) for task, counts in self.per_feature.items()
        )
        return "\n".join([
            f"{self.out}: {self.images} lesion images",
            "  classes " + ", ".join(f"BI-RADS {k}: {v}" for k, v in self.per_class.items()),
            f"  features {features}; direction: unknown for every image (no file)",
            "  folds " + ", ".join(f"{k}: {v}" for k, v in self.per_fold.items()),
            "  placed " + ", ".join(f"{k}: {v}" for k, v in self.placed.items()) + " (train/cla and train/fea)",
            f"  {len(self.normals)} normal case(s) (BI-RADS 1, no lesion) left out: " + ", ".join(self.normals),
        ])


def find_spreadsheet(src: Path) -> Path:
    """The one clinical-data .xlsx in `src`."""
    found = sorted(src.glob("*.xlsx"))
    if len(found) != 1:
        raise AdapterError(f"{src}: expected one clinical-data .xlsx (is --src the BrEaST folder?), found {found}")
    return found[0]


def _feature(task: str, value: str, where: str) -> int | None:
    column, mapping = FEATURES[task]
    key = value.split(" - ")[0].strip().lower()
    if key not in mapping:
        raise AdapterError(f"{where}: {column} {value!r} is not one of {list(mapping)}")
    return mapping[key]


def _parse_row(raw: dict[str, str], where: str) -> Row:
    birads, pathology = raw["BIRADS"].strip().upper(), raw["Classification"].strip().lower()
    if birads not in (NORMAL, *CLASSES):
        raise AdapterError(f"{where}: BIRADS {raw['BIRADS']!r} is not one of {[NORMAL, *CLASSES]}")
    if not raw["CaseID"].strip() or not raw["Image_filename"].strip():
        raise AdapterError(f"{where}: empty CaseID or Image_filename")
    features = {}
    if birads != NORMAL:
        if pathology not in PATHOLOGIES:
            raise AdapterError(f"{where}: Classification {raw['Classification']!r} is not one of "
                               f"{sorted(PATHOLOGIES)}")
        if not raw["Mask_tumor_filename"].strip():
            raise AdapterError(f"{where}: BI-RADS {birads} lesion without Mask_tumor_filename")
        features = {task: _feature(task, raw[column], where) for task, (column, _) in FEATURES.items()}
    return Row(
        case=raw["CaseID"].strip(), image=raw["Image_filename"].strip(), mask=raw["Mask_tumor_filename"].strip(),
        birads=birads, pathology=pathology, verification=raw["Verification"].strip(),
        diagnosis=raw["Diagnosis"].strip(), descriptors=(raw["Shape"], raw["Margin"], raw["Calcifications"]),
        features=features,
    )


def read_rows(path: Path) -> list[Row]:
    """Rows of the first sheet, checked; case IDs and image names must be unique."""
    try:
        table = pd.read_excel(path, sheet_name=0, dtype=str).fillna("")
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path}: cannot read the spreadsheet ({exc})") from None
    absent = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if absent:
        raise AdapterError(f"{path}: missing column(s) {absent}; header is {list(table.columns)}")
    # Spreadsheet row numbers: the header is row 1.
    rows = [_parse_row(raw, f"{path}: row {i + 2}") for i, raw in enumerate(table.to_dict("records"))]
    for name, values in (("CaseID", [r.case for r in rows]), ("Image_filename", [r.image for r in rows])):
        repeated = [v for v, n in Counter(values).items() if n > 1]
        if repeated:
            raise AdapterError(f"{path}: repeated {name}(s) {repeated[:10]}")
    if not rows:
        raise AdapterError(f"{path}: no rows")
    return rows


def mask_box(image: Path, mask: Path) -> Box:
    """YOLO box around the non-zero pixels of a tumour mask the size of its image."""
    size = image_size(image, "the spreadsheet")
    try:
        pixels = read_image(mask, max_side=None).max(axis=2) > MASK_THRESHOLD
    except ImageReadError as exc:
        raise AdapterError(f"{mask}: tumour mask: {exc.cause}") from None
    if pixels.shape[::-1] != size:
        raise AdapterError(f"{mask}: mask is {pixels.shape[1]}x{pixels.shape[0]}, its image {image.name} is "
                           f"{size[0]}x{size[1]}")
    if not pixels.any():
        raise AdapterError(f"{mask}: tumour mask is empty")
    return yolo_box(cv2.boundingRect(pixels.astype(np.uint8)), size, str(mask))


def assign_folds(rows: Sequence[Row], folds: int, seed: int) -> list[int]:
    """Fold 1..K of each row, stratified by BI-RADS and grouped by patient (case)."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = [0] * len(rows)
    labels, groups = [r.birads for r in rows], [r.case for r in rows]
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(rows)), labels, groups), start=1):
        for index in val:
            fold_of[index] = fold
    return fold_of


def _dataset_yaml() -> str:
    config = {"classes": list(CLASSES), "metadata": METADATA_FILE, "group_column": "patient", "fold_column": "fold"}
    return dataset_yaml(config, f"BrEaST-Lesions_USG converted by project.adapters.breast (CC BY 4.0). "
                                f"Cite: {CITATION}")


def _write_labels(out: Path, row: Row, box: Box) -> None:
    stem = Path(row.image).stem
    folder = out / "train" / "cla" / class_folder_name(row.birads)
    atomic_write_text(folder / "labels" / f"{stem}.txt", label_line(CLASSES.index(row.birads) + 1, box))
    for task, value in row.features.items():
        if value is not None:
            atomic_write_text(out / "train" / "fea" / f"{task}_labels" / f"{stem}.txt", label_line(value, box))


def _feature_counts(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    counts = {task: Counter("unknown" if r.features[task] is None else str(r.features[task]) for r in rows)
              for task in FEATURES}
    return {task: dict(sorted(c.items())) for task, c in counts.items()}


def convert_breast(src: Path, out: Path, folds: int = 5, seed: int = 0, link: str = "symlink") -> ConversionSummary:
    """Write `out/train/cla/<k>类/...` and `out/train/fea/...` (each with the tumour masks under `masks/`),
    `out/metadata.csv` and `out/dataset.yaml`."""
    src, out = Path(src), Path(out)
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    all_rows = read_rows(find_spreadsheet(src))
    rows = [r for r in all_rows if not r.normal]
    check_out(out)
    images = src / IMAGE_DIR
    boxes = [mask_box(images / r.image, images / r.mask) for r in rows]  # every case checked before writing
    fold_of = assign_folds(rows, folds, seed)
    placed: Counter[str] = Counter()
    for row, box in zip(rows, boxes):
        source = images / row.image
        class_folder = out / "train" / "cla" / class_folder_name(row.birads)
        placed[place_image(source, class_folder / "images" / row.image, link)] += 1
        place_image(images / row.mask, class_folder / "masks" / row.image, link)
        placed[place_image(source, out / "train" / "fea" / "images" / row.image, link)] += 1
        place_image(images / row.mask, out / "train" / "fea" / "masks" / row.image, link)
        _write_labels(out, row, box)
    metadata = [(r.image, r.case, f, r.birads, r.pathology, r.verification, r.diagnosis, *r.descriptors)
                for r, f in zip(rows, fold_of)]
    atomic_write_csv(out / METADATA_FILE, METADATA_COLUMNS, metadata)
    atomic_write_text(out / CONFIG_FILE, _dataset_yaml())
    return ConversionSummary(
        out=out,
        per_class={c: n for c in CLASSES if (n := sum(r.birads == c for r in rows))},
        per_feature=_feature_counts(rows),
        per_fold={str(k): v for k, v in sorted(Counter(fold_of).items())},
        placed=dict(placed),
        normals=[r.image for r in all_rows if r.normal],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.adapters.breast",
        description="Convert BrEaST-Lesions_USG (clinical-data .xlsx + images and masks) into the challenge "
        "layout. Source images are linked or copied, never modified.",
        epilog=f"Licence CC BY 4.0. Cite the dataset: {CITATION}",
    )
    parser.add_argument("--src", type=Path, required=True,
                        help=f"BrEaST folder holding the clinical-data .xlsx and {IMAGE_DIR}/")
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--folds", type=int, default=5, help="patient folds, stratified by BI-RADS (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    add_link_arguments(parser)
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert_breast(args.src, args.out, args.folds, args.seed, args.link))


if __name__ == "__main__":
    sys.exit(main())
