"""The challenge folder layout (train/cla/<class>/images|labels, train/fea, testB) read into typed records."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from project.data.classes import (
    BIRADS_CLASSES,
    FEATURE_TASKS,
    UnknownClassFolder,
    match_class_folder,
    normalise_class_name,
)
from project.fileio import numeric_order_key

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
CONFIG_FILE = "dataset.yaml"

Box = tuple[float, float, float, float]
"""A YOLO box: centre x, centre y, width, height, normalised to [0, 1]."""


@dataclass
class Sample:
    """One image and what is known about it; None means unknown."""

    path: Path
    label: int | None = None
    box: Box | None = None
    features: dict[str, int | None] = field(default_factory=dict)
    group: str | None = None
    fold: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    allowed: tuple[int, ...] | None = None
    """A coarse label (dataset.yaml `coarse_labels`): the class indices it allows; `label` is then None."""
    mask: Path | None = None
    """A lesion mask (an image of the same size, lesion bright), from an optional `masks/` folder."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file of a dataset."""

    path: Path
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


@dataclass
class Scan:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class DatasetConfig:
    """`dataset.yaml` at the dataset root; every field is optional.

    `metadata` names a CSV (relative to the root) with an `image` column holding file
    names; `group_column` and `fold_column` name its patient and official-fold columns,
    and every other column is kept in `Sample.extra`. `coarse_labels` maps a class-folder
    name that is not one of `classes` to the classes it allows, e.g. `{"4": ["4A", "4B", "4C"]}`
    where one dataset says "BI-RADS 4" and another 4A, 4B or 4C.
    """

    classes: tuple[str, ...] = BIRADS_CLASSES
    tasks: tuple[str, ...] = FEATURE_TASKS
    metadata: str | None = None
    group_column: str | None = None
    fold_column: str | None = None
    coarse_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def allowed_indices(self, coarse: str) -> tuple[int, ...]:
        """Indices in `classes` of the classes a coarse label allows."""
        return tuple(self.classes.index(c) for c in self.coarse_labels[coarse])

    def class_name(self, sample: Sample) -> str:
        """The class or coarse label a classification sample carries."""
        if sample.label is not None:
            return self.classes[sample.label]
        return next(name for name in self.coarse_labels if self.allowed_indices(name) == sample.allowed)


class LabelError(ValueError):
    """A label file that cannot be parsed; the message names the file and line."""


class NotADataset(ValueError):
    """A folder that holds none of the challenge layout."""


def load_config(root: Path) -> DatasetConfig:
    path = Path(root) / CONFIG_FILE
    if not path.is_file():
        return DatasetConfig()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(raw) - set(DatasetConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
    for key in ("classes", "tasks"):
        if key in raw:
            raw[key] = tuple(str(v) for v in raw[key])
    coarse = raw.pop("coarse_labels", None) or {}
    config = DatasetConfig(**raw)
    config.coarse_labels = _coarse_labels(coarse, config.classes, path)
    return config


def _coarse_labels(raw: object, classes: Sequence[str], path: Path) -> dict[str, tuple[str, ...]]:
    """`coarse_labels` checked: a mapping from a name that is no class to a non-empty list of classes."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: coarse_labels must map a folder name to a list of classes, got {raw!r}")
    coarse = {}
    for name, members in raw.items():
        name = str(name)
        if not isinstance(members, list | tuple) or not members:
            raise ValueError(f"{path}: coarse label {name!r} must list the classes it allows, got {members!r}")
        members = tuple(str(m) for m in members)
        unknown = [m for m in members if m not in classes]
        if unknown:
            raise ValueError(f"{path}: coarse label {name!r} allows {unknown}, not among the classes {list(classes)}")
        if any(normalise_class_name(name) == normalise_class_name(c) for c in classes):
            raise ValueError(f"{path}: coarse label {name!r} names a class of {list(classes)}")
        coarse[name] = members
    return coarse


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Entries named like images (files or not: readers report the bad ones), numeric order."""
    entries = [p for p in Path(folder).iterdir() if is_image_name(p) and not p.name.startswith(".")]
    return sorted(entries, key=lambda p: numeric_order_key(p.name))


def parse_label_file(path: Path) -> list[tuple[int, Box]]:
    """Lines of `id cx cy w h`; blank lines are skipped, anything else malformed raises."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read label file ({exc})") from exc
    entries = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise LabelError(f"{path}:{line_no}: expected 'id cx cy w h', got {line.strip()!r}")
        try:
            value = float(fields[0])
            box = tuple(float(v) for v in fields[1:])
        except ValueError as exc:
            raise LabelError(f"{path}:{line_no}: non-numeric field in {line.strip()!r}") from exc
        if value != int(value):
            raise LabelError(f"{path}:{line_no}: id {fields[0]!r} is not an integer")
        entries.append((int(value), box))
    if not entries:
        raise LabelError(f"{path}: empty label file")
    return entries


def labelled_box(image: Path) -> Box | None:
    """The lesion box of an image in a class folder: labels/<stem>.txt beside its images/ folder (None: no file)."""
    label_file = Path(image).parent.parent / "labels" / f"{Path(image).stem}.txt"
    return parse_label_file(label_file)[0][1] if label_file.is_file() else None


def label_line(value: int, box: Sequence[float]) -> str:
    """`value cx cy w h` with 6 decimals: the writer's side of parse_label_file."""
    return " ".join([str(value), *(f"{c:.6f}" for c in box)]) + "\n"


def class_folder_name(class_name: str) -> str:
    """The challenge's folder name for a class: '4A' -> '4A类'."""
    return f"{class_name}类"


def _box_problem(path: Path, box: Box) -> Problem | None:
    cx, cy, w, h = box
    inside = 0 <= cx - w / 2 + 1e-6 and cx + w / 2 - 1e-6 <= 1 and 0 <= cy - h / 2 + 1e-6
    if inside and cy + h / 2 - 1e-6 <= 1 and w > 0 and h > 0:
        return None
    return Problem(path, "box outside [0, 1]", f"cx={cx} cy={cy} w={w} h={h}")


def _label_files(labels_dir: Path, image_stems: set[str], scan: Scan) -> dict[str, Path]:
    """Label files by stem; those whose image is missing are reported."""
    files = {p.stem: p for p in labels_dir.glob("*.txt")} if labels_dir.is_dir() else {}
    for stem in sorted(set(files) - image_stems, key=numeric_order_key):
        scan.problems.append(Problem(files[stem], "label without image", "no image has this stem"))
    return files


def _images(folder: Path) -> list[Path]:
    return list_images(folder) if folder.is_dir() else []


def _masks(folder: Path) -> dict[str, Path]:
    """Lesion masks by the stem of their image (optional `masks/` folders)."""
    return {path.stem: path for path in _images(folder)}


def match_folder(
    folder_name: str, classes: Sequence[str], coarse_labels: Mapping[str, Sequence[str]] | None = None
) -> tuple[int | None, tuple[int, ...] | None]:
    """(class index, None) for a class folder, (None, allowed class indices) for a coarse one."""
    try:
        return match_class_folder(folder_name, classes), None
    except UnknownClassFolder:
        if not coarse_labels:
            raise
    try:
        name = list(coarse_labels)[match_class_folder(folder_name, list(coarse_labels))]
    except UnknownClassFolder:
        raise UnknownClassFolder(
            f"class folder {folder_name!r} names none of the classes {list(classes)} "
            f"nor the coarse labels {list(coarse_labels)}"
        ) from None
    return None, tuple(classes.index(c) for c in coarse_labels[name])


def scan_classification(
    split_dir: Path, classes: Sequence[str] = BIRADS_CLASSES, coarse_labels: Mapping[str, Sequence[str]] | None = None
) -> Scan:
    """Read `split_dir/cla/<class folder>/images|labels[|masks]`; the folder is the ground truth.

    A folder named by a coarse label gives samples with `label` None and `allowed` set; the class
    id in its label files is not checked (the coarse label has none), the box is read.
    """
    scan = Scan()
    cla_dir = Path(split_dir) / "cla"
    if not cla_dir.is_dir():
        return scan
    for folder in sorted(p for p in cla_dir.iterdir() if p.is_dir()):
        try:
            label, allowed = match_folder(folder.name, classes, coarse_labels)
        except UnknownClassFolder as exc:
            scan.problems.append(Problem(folder, "unknown class folder", str(exc)))
            continue
        images = _images(folder / "images")
        label_files = _label_files(folder / "labels", {p.stem for p in images}, scan)
        masks = _masks(folder / "masks")
        for image in images:
            sample = Sample(path=image, label=label, allowed=allowed, mask=masks.get(image.stem))
            label_file = label_files.get(image.stem)
            if label_file is None:
                scan.problems.append(Problem(image, "image without label", "no label file"))
            else:
                _read_class_label(label_file, label, sample, scan)
            scan.samples.append(sample)
    return scan


def _parse_reporting(label_file: Path, scan: Scan) -> list[tuple[int, Box]] | None:
    try:
        return parse_label_file(label_file)
    except LabelError as exc:
        scan.problems.append(Problem(label_file, "bad label file", str(exc)))
        return None


def _take_box(sample: Sample, box: Box, label_file: Path, scan: Scan) -> None:
    sample.box = box
    problem = _box_problem(label_file, box)
    if problem:
        scan.problems.append(problem)


def _read_class_label(label_file: Path, label: int | None, sample: Sample, scan: Scan) -> None:
    entries = _parse_reporting(label_file, scan)
    if entries is None:
        return
    ids = sorted({cls_id for cls_id, _ in entries})
    if label is not None and ids != [label + 1]:
        scan.problems.append(
            Problem(label_file, "class disagrees with folder", f"label id(s) {ids}, folder says {label + 1}")
        )
    _take_box(sample, entries[0][1], label_file, scan)


def scan_features(split_dir: Path, tasks: Sequence[str] = FEATURE_TASKS) -> Scan:
    """Read `split_dir/fea/images`, `<task>_labels` (a missing file leaves that task unknown) and `masks`."""
    scan = Scan()
    fea_dir = Path(split_dir) / "fea"
    if not fea_dir.is_dir():
        return scan
    images = _images(fea_dir / "images")
    image_stems = {p.stem for p in images}
    per_task = {task: _label_files(fea_dir / f"{task}_labels", image_stems, scan) for task in tasks}
    masks = _masks(fea_dir / "masks")
    for image in images:
        sample = Sample(path=image, features={task: None for task in tasks}, mask=masks.get(image.stem))
        for task in tasks:
            label_file = per_task[task].get(image.stem)
            if label_file is not None:
                _read_feature_label(label_file, task, sample, scan)
        if all(v is None for v in sample.features.values()):
            scan.problems.append(Problem(image, "image without label", "no feature label file"))
        scan.samples.append(sample)
    return scan


def _read_feature_label(label_file: Path, task: str, sample: Sample, scan: Scan) -> None:
    entries = _parse_reporting(label_file, scan)
    if entries is None:
        return
    values = {value for value, _ in entries}
    if not values <= {0, 1}:
        scan.problems.append(Problem(label_file, "bad label file", f"feature values {sorted(values)} not in {{0, 1}}"))
        return
    # Lines that disagree mean the feature is present somewhere (the challenge's convention).
    sample.features[task] = max(values)
    if sample.box is None:
        _take_box(sample, entries[0][1], label_file, scan)


def attach_metadata(samples: list[Sample], root: Path, config: DatasetConfig) -> None:
    """Fill group, fold and extra columns from the metadata CSV named in the config."""
    if not config.metadata:
        return
    path = Path(root) / config.metadata
    with path.open(newline="", encoding="utf-8") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    for sample in samples:
        row = rows.get(sample.path.name)
        if row is None:
            continue
        if config.group_column:
            sample.group = row[config.group_column]
        if config.fold_column and row.get(config.fold_column, "") != "":
            sample.fold = int(row[config.fold_column])
        sample.extra = {k: v for k, v in row.items() if k not in ("image", config.group_column, config.fold_column)}


def find_split(root: Path, split: str = "train") -> Path:
    """`root/split` when it exists, else `root` itself when it holds `cla/` or `fea/`."""
    root = Path(root)
    for candidate in (root / split, root):
        if (candidate / "cla").is_dir() or (candidate / "fea").is_dir():
            return candidate
    raise NotADataset(f"{root}: no {split}/cla, {split}/fea, cla/ or fea/ folder (see the README, 'Your own data')")


def load_split(root: Path, split: str = "train", task: str = "cla") -> tuple[Scan, DatasetConfig]:
    """Samples of one split for 'cla' (classification) or 'fea' (features), metadata attached."""
    root = Path(root)
    config = load_config(root)
    split_dir = find_split(root, split)
    if task == "cla":
        scan = scan_classification(split_dir, config.classes, config.coarse_labels)
    elif task == "fea":
        scan = scan_features(split_dir, config.tasks)
    else:
        raise ValueError(f"task must be 'cla' or 'fea', got {task!r}")
    attach_metadata(scan.samples, root, config)
    return scan, config
