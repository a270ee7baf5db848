"""mini-MIAS to the prepared mammography layout: breast-cropped PNGs, manifest, lesion circles, patient folds.

``python -m project.adapters.minimias --src ../shared/data/mini-mias --out DIR [--size 1024x512] [--folds 5]``

Source (``../shared/data/mini-mias/README.md``): ``images/mdbNNN.png`` (1024 x 1024, 8-bit), one
MLO view per breast; mdb001/mdb002 are one woman, mdb003/mdb004 the next, ...; even numbers are
left breasts, odd numbers right. ``labels.txt``: ``REFNUM BG CLASS [SEVERITY [X Y RADIUS]]`` per
finding, X and Y with the origin at the bottom-left corner.

Output, read like ``python -m project.mammo.prepare``'s (same ``manifest.csv`` columns first and the
same ``prepare.json``): ``DIR/images/<patient>/<image>.png``, the breast cropped and fitted into
``--size`` (:func:`project.mammo.roi.crop_breast`), right breasts flipped so that the chest wall is on
the left (``flip="laterality"``: the side is known from the number, while the mask's side is
ambiguous on breasts that fill the film; the summary lists where the two disagree); ``DIR/manifest.csv``
one row per image with ``label`` = 1 when the image has a malignant finding, plus ``fold``
(patient-level, stratified by whether the woman has cancer), ``tissue``, ``pathology`` (normal,
benign or malignant: the worst finding) and ``findings``; ``DIR/lesions.csv`` one row per finding
with its centre and radius in output pixels (empty where the source gives no location).

Dataset (research use only; cite it wherever results on it are shown): J. Suckling et al., "The
Mammographic Image Analysis Society Digital Mammogram Database", Excerpta Medica, International
Congress Series 1069, pp. 375-378, 1994.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sklearn.model_selection import StratifiedKFold

from project.adapters.common import AdapterError, check_out, run_conversion
from project.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_text
from project.mammo.prepare import MANIFEST_COLUMNS, Settings, encode_png, parse_size
from project.mammo.preprocess import PREPARE_SETTINGS_FILE, map_point
from project.mammo.roi import CropInfo, crop_breast

LABELS_FILE = "labels.txt"
IMAGE_DIR = "images"
TISSUES = frozenset({"F", "G", "D"})
CLASSES = frozenset({"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"})
SEVERITIES = {"B": "benign", "M": "malignant"}
EXTRA_COLUMNS = ("fold", "tissue", "pathology", "findings")
LESION_COLUMNS = ("image", "patient", "laterality", "fold", "class", "severity", "cancer", "x", "y", "radius")
NOTE = re.compile(r"^\*NOTE \d+\*$")  # "*NOTE 3*": calcifications spread over the breast, no location
CITATION = (
    'J. Suckling et al., "The Mammographic Image Analysis Society Digital Mammogram Database", '
    "Excerpta Medica, International Congress Series 1069, pp. 375-378, 1994."
)


@dataclass(frozen=True)
class Finding:
    """One line of labels.txt; x, y, radius in source pixels with MIAS's bottom-left origin."""

    image: str
    tissue: str
    kind: str
    severity: str | None = None  # "B" or "M"; None for NORM
    x: int | None = None
    y: int | None = None
    radius: int | None = None


@dataclass
class MiasImage:
    """One source image: its woman, side and findings."""

    image: str
    patient: str
    laterality: str
    tissue: str
    findings: list[Finding]
    fold: int = 0

    @property
    def pathology(self) -> str:
        severities = {f.severity for f in self.findings}
        return "malignant" if "M" in severities else "benign" if "B" in severities else "normal"


@dataclass
class ConversionSummary:
    """What convert_minimias wrote."""

    out: Path
    images: int = 0
    women: int = 0
    per_pathology: dict[str, int] = field(default_factory=dict)  # per image = per breast here
    women_with_cancer: int = 0
    findings: dict[str, int] = field(default_factory=dict)
    without_location: list[str] = field(default_factory=list)
    per_fold: dict[int, str] = field(default_factory=dict)
    flipped: int = 0
    side_disagrees: list[str] = field(default_factory=list)  # breast mask leaning to the side laterality contradicts

    def __str__(self) -> str:
        return "\n".join([
            f"{self.out}: {self.images} images (one MLO view per breast) of {self.women} women, "
            f"{self.women_with_cancer} with cancer",
            "  breasts " + ", ".join(f"{k}: {v}" for k, v in self.per_pathology.items()),
            "  findings " + ", ".join(f"{k}: {v}" for k, v in self.findings.items())
            + f"; without a location: {', '.join(self.without_location) or 'none'}",
            "  folds " + ", ".join(f"{k}: {v}" for k, v in self.per_fold.items()),
            f"  {self.flipped} right breast(s) flipped to put the chest wall on the left; "
            f"{len(self.side_disagrees)} whose breast mask leans to the other side than its laterality says"
            + (f": {', '.join(self.side_disagrees[:10])}" if self.side_disagrees else ""),
        ])


def _int(token: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise AdapterError(f"{where}: {token!r} is not a whole number of pixels") from None


def parse_line(line: str, where: str) -> Finding:
    """One labels.txt line; the message names the file and line of anything it cannot use."""
    tokens = line.split()
    if len(tokens) < 3:
        raise AdapterError(f"{where}: expected 'REFNUM BG CLASS [SEVERITY X Y RADIUS]', got {line.strip()!r}")
    image, tissue, kind, rest = tokens[0], tokens[1], tokens[2], tokens[3:]
    if not re.fullmatch(r"mdb\d{3}", image):
        raise AdapterError(f"{where}: reference {image!r} is not mdbNNN")
    if tissue not in TISSUES or kind not in CLASSES:
        raise AdapterError(f"{where}: background {tissue!r} or class {kind!r} unknown")
    if kind == "NORM":
        if rest:
            raise AdapterError(f"{where}: a normal image with more fields {rest}")
        return Finding(image, tissue, kind)
    if not rest or rest[0] not in SEVERITIES:
        raise AdapterError(f"{where}: class {kind} needs severity B or M, got {rest[:1]}")
    location = rest[1:]
    if not location or NOTE.match(" ".join(location)):
        return Finding(image, tissue, kind, rest[0])
    if len(location) != 3:
        raise AdapterError(f"{where}: expected X Y RADIUS after the severity, got {location}")
    x, y, radius = (_int(t, where) for t in location)
    return Finding(image, tissue, kind, rest[0], x, y, radius)


def read_labels(path: Path) -> list[Finding]:
    """Every finding line of labels.txt (blank lines skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read ({exc.strerror}); is --src the mini-MIAS folder?") from None
    findings = [parse_line(line, f"{path}:{n}") for n, line in enumerate(lines, start=1) if line.strip()]
    if not findings:
        raise AdapterError(f"{path}: no findings")
    return findings


def woman_and_side(image: str) -> tuple[str, str]:
    """mdb001 -> ("mias001", "R"), mdb002 -> ("mias001", "L"): pairs are one woman, even numbers left."""
    number = int(image[3:])
    return f"mias{(number + 1) // 2:03d}", "L" if number % 2 == 0 else "R"


def group_images(findings: Sequence[Finding], image_dir: Path) -> list[MiasImage]:
    """Findings by image, in image order; every image file and every listed image must exist."""
    by_image: dict[str, list[Finding]] = {}
    for finding in findings:
        by_image.setdefault(finding.image, []).append(finding)
    files = {p.stem for p in image_dir.glob("mdb*.png")}
    missing = sorted(set(by_image) - files)
    if missing:
        raise AdapterError(f"{image_dir}: image(s) listed in {LABELS_FILE} not found: {missing[:10]}")
    unlisted = sorted(files - set(by_image))
    if unlisted:
        raise AdapterError(f"{image_dir}: image(s) without a line in {LABELS_FILE}: {unlisted[:10]}")
    images = []
    for name in sorted(by_image):
        normal = [f for f in by_image[name] if f.kind == "NORM"]
        if normal and len(by_image[name]) > 1:
            raise AdapterError(f"{LABELS_FILE}: {name} is listed both as normal and with findings")
        patient, side = woman_and_side(name)
        lesions = [f for f in by_image[name] if f.kind != "NORM"]
        images.append(MiasImage(name, patient, side, by_image[name][0].tissue, lesions))
    return images


def assign_folds(images: Sequence[MiasImage], k: int, seed: int) -> None:
    """Patient-level folds 0..k-1, stratified by whether the woman has a malignant finding."""
    women = sorted({im.patient for im in images})
    cancer = {im.patient for im in images if im.pathology == "malignant"}
    labels = [int(w in cancer) for w in women]
    if k < 2 or min(Counter(labels).values()) < k:
        raise AdapterError(f"cannot make {k} folds of {len(women)} women ({sum(labels)} with cancer)")
    fold_of = {}
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(women)), labels)):
        fold_of.update({women[i]: fold for i in held_out})
    for image in images:
        image.fold = fold_of[image.patient]


def convert_image(src: Path, image: MiasImage, settings: Settings) -> tuple[np.ndarray, CropInfo, list[list[str]]]:
    """The cropped image, where it came from, and its lesion rows (LESION_COLUMNS) in output pixels."""
    pixels = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise AdapterError(f"{src}: not an 8-bit grey-scale image")
    height, width = pixels.shape
    out, info = crop_breast(pixels, size=settings.size, laterality=image.laterality, flip=settings.flip,
                            clean=settings.clean)
    rows = []
    for f in image.findings:
        centre = ["", "", ""]
        if f.x is not None:
            if not (0 <= f.x < width and 0 <= f.y < height):
                raise AdapterError(f"{LABELS_FILE}: {image.image} centre ({f.x}, {f.y}) outside the "
                                   f"{width}x{height} image")
            x, y = map_point(info, f.x, height - 1 - f.y)  # MIAS counts rows from the bottom
            centre = [f"{x:.1f}", f"{y:.1f}", f"{f.radius * info.scale:.1f}"]
        rows.append([image.image, image.patient, image.laterality, str(image.fold), f.kind, SEVERITIES[f.severity],
                     str(int(f.severity == "M")), *centre])
    return out, info, rows


def _manifest_row(image: MiasImage, info: CropInfo, png: str) -> list[str]:
    x0, y0, x1, y1 = info.box
    base = {"image": image.image, "patient": image.patient, "laterality": image.laterality, "view": "MLO",
            "label": str(int(image.pathology == "malignant")), "backend": "png", "crop_x0": str(x0),
            "crop_y0": str(y0), "crop_x1": str(x1), "crop_y1": str(y1), "flipped": str(int(info.flipped)),
            "png": png}
    findings = ";".join(f"{f.kind}-{f.severity}" for f in image.findings)
    return [base[c] for c in MANIFEST_COLUMNS] + [str(image.fold), image.tissue, image.pathology, findings]


def convert_minimias(
    src: Path, out: Path, size: tuple[int, int] = (1024, 512), folds: int = 5, seed: int = 0, clean: bool = True,
    women: int | None = None, workers: int = 2,
) -> ConversionSummary:
    """Write the prepared layout of mini-MIAS (the first `women` women only, when given) to `out`."""
    src, out = Path(src), Path(out)
    findings = read_labels(src / LABELS_FILE)
    images = group_images(findings, src / IMAGE_DIR)
    assign_folds(images, folds, seed)
    if women is not None:
        keep = sorted({im.patient for im in images})[:women]
        images = [im for im in images if im.patient in keep]
    check_out(out)
    settings = Settings(tuple(size), 8, "laterality", clean, 0)

    def one(image: MiasImage) -> tuple[CropInfo, list[list[str]], str]:
        pixels, info, lesions = convert_image(src / IMAGE_DIR / f"{image.image}.png", image, settings)
        png = f"images/{image.patient}/{image.image}.png"
        atomic_write_bytes(out / png, encode_png(pixels))
        return info, lesions, png

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = list(pool.map(one, images))
    manifest = [_manifest_row(im, info, png) for im, (info, _, png) in zip(images, done, strict=True)]
    atomic_write_csv(out / "manifest.csv", (*MANIFEST_COLUMNS, *EXTRA_COLUMNS), manifest)
    atomic_write_csv(out / "lesions.csv", LESION_COLUMNS, [row for _, lesions, _ in done for row in lesions])
    atomic_write_text(out / PREPARE_SETTINGS_FILE, json.dumps(settings.as_json(), indent=1) + "\n")
    atomic_write_text(out / "CITATION.txt", f"mini-MIAS, converted by project.adapters.minimias. Cite: {CITATION}\n")
    return _summary(out, images, [info for info, _, _ in done])


def _summary(out: Path, images: Sequence[MiasImage], infos: Sequence[CropInfo]) -> ConversionSummary:
    per_fold: dict[int, list[MiasImage]] = {}
    for im in images:
        per_fold.setdefault(im.fold, []).append(im)
    return ConversionSummary(
        out=out,
        images=len(images),
        women=len({im.patient for im in images}),
        per_pathology=dict(Counter(im.pathology for im in images).most_common()),
        women_with_cancer=len({im.patient for im in images if im.pathology == "malignant"}),
        findings=dict(Counter(f"{f.kind} {SEVERITIES[f.severity]}" for im in images for f in im.findings)
                      .most_common()),
        without_location=[im.image for im in images for f in im.findings if f.x is None],
        per_fold={k: f"{len({im.patient for im in v})} women, {sum(im.pathology == 'malignant' for im in v)} "
                     f"malignant breasts" for k, v in sorted(per_fold.items())},
        flipped=sum(info.flipped for info in infos),
        side_disagrees=[im.image for im, info in zip(images, infos, strict=True)
                        if info.found and (info.side == "left") != (im.laterality == "L")],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.adapters.minimias",
        description="Convert mini-MIAS (images/ + labels.txt) into the prepared mammography layout "
        "(breast-cropped PNGs, manifest.csv, lesions.csv, patient folds). The source is never modified.",
        epilog=f"Cite the dataset: {CITATION}",
    )
    parser.add_argument("--src", type=Path, required=True, help="mini-MIAS folder holding labels.txt and images/")
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--size", type=parse_size, default=(1024, 512), help="output HxW (default 1024x512)")
    parser.add_argument("--folds", type=int, default=5, help="patient-level folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--no-clean", action="store_true", help="keep film labels inside the crop")
    parser.add_argument("--workers", type=int, default=2, help="image threads")
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert_minimias(args.src, args.out, args.size, args.folds, args.seed,
                                                   not args.no_clean, workers=args.workers))


if __name__ == "__main__":
    sys.exit(main())
