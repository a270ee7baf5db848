"""The challenge layout reader: folder matching, label parsing, unknown labels, problems."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_image, write_label

from project.data.classes import BIRADS_CLASSES, UnknownClassFolder, match_class_folder
from project.data.layout import (
    LabelError,
    NotADataset,
    list_images,
    load_split,
    parse_label_file,
    scan_classification,
    scan_features,
)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("2类", "2"), ("4A类", "4A"), ("4类a", "4A"), ("4b类", "4B"), ("BI-RADS 4C", "4C"),
     ("birads_5", "5"), ("3", "3"), ("4a", "4A")],
)
def test_class_folders_match_by_category(folder: str, expected: str) -> None:
    assert BIRADS_CLASSES[match_class_folder(folder, BIRADS_CLASSES)] == expected


def test_unknown_class_folder_is_rejected_with_its_name() -> None:
    with pytest.raises(UnknownClassFolder, match="6类"):
        match_class_folder("6类", BIRADS_CLASSES)
    with pytest.raises(UnknownClassFolder, match="4A"):
        match_class_folder("4A类", ("2", "3", "4", "5"))


def test_label_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    write_label(path, "3 0.5 0.25 0.1 0.2", "", "3.0 0.1 0.1 0.1 0.1")
    assert parse_label_file(path) == [(3, (0.5, 0.25, 0.1, 0.2)), (3, (0.1, 0.1, 0.1, 0.1))]
    for text, message in (("", "empty"), ("3 0.5 0.5", "expected"), ("x 1 1 1 1", "non-numeric"),
                          ("2.5 0.5 0.5 0.1 0.1", "not an integer")):
        path.write_text(text)
        with pytest.raises(LabelError, match=message) as info:
            parse_label_file(path)
        assert str(path) in str(info.value)


def test_classification_records(tiny_dataset: Path) -> None:
    scan = scan_classification(tiny_dataset / "train", BIRADS_CLASSES)
    assert scan.problems == []
    by_name = {s.path.name: s for s in scan.samples}
    assert {n: s.label for n, s in by_name.items()} == {"1.jpg": 0, "2.jpg": 0, "3.jpg": 2}
    assert by_name["3.jpg"].box == (0.5, 0.5, 0.2, 0.3)


def test_feature_records_multi_line_and_unknown(tiny_dataset: Path) -> None:
    fea = tiny_dataset / "train" / "fea"
    write_label(fea / "shape_labels" / "11.txt", "0 0.2 0.2 0.1 0.1", "1 0.6 0.6 0.1 0.1")
    (fea / "calcification_labels" / "12.txt").unlink()
    scan = scan_features(tiny_dataset / "train")
    by_stem = {s.path.stem: s.features for s in scan.samples}
    assert by_stem["10"] == {"boundary": 0, "calcification": 1, "direction": 0, "shape": 1}
    assert by_stem["11"]["shape"] == 1
    assert by_stem["12"]["calcification"] is None
    assert scan.problems == []


def test_problems_are_reported_per_file(tiny_dataset: Path) -> None:
    cla = tiny_dataset / "train" / "cla"
    write_label(cla / "2类" / "labels" / "2.txt", "4 0.5 0.5 0.2 0.2")
    write_label(cla / "2类" / "labels" / "99.txt", "1 0.5 0.5 0.2 0.2")
    write_label(cla / "4类a" / "labels" / "3.txt", "3 0.95 0.5 0.2 0.2")
    write_image(cla / "2类" / "images" / "7.jpg", 7)
    (cla / "7类" / "images").mkdir(parents=True)
    scan = scan_classification(tiny_dataset / "train")
    found = {(p.path.name, p.kind) for p in scan.problems}
    assert found == {
        ("2.txt", "class disagrees with folder"),
        ("99.txt", "label without image"),
        ("3.txt", "box outside [0, 1]"),
        ("7.jpg", "image without label"),
        ("7类", "unknown class folder"),
    }
    assert len(scan.samples) == 4


def test_dataset_config_and_metadata(tiny_dataset: Path) -> None:
    (tiny_dataset / "dataset.yaml").write_text(
        "classes: ['2', '3', '4A', '4B', '4C', '5']\nmetadata: meta.csv\ngroup_column: patient\n"
    )
    (tiny_dataset / "meta.csv").write_text("image,patient,pathology\n1.jpg,p1,benign\n2.jpg,p1,malignant\n")
    scan, config = load_split(tiny_dataset, "train", "cla")
    groups = {s.path.name: (s.group, s.extra.get("pathology")) for s in scan.samples}
    assert groups == {"1.jpg": ("p1", "benign"), "2.jpg": ("p1", "malignant"), "3.jpg": (None, None)}
    assert config.group_column == "patient"


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(NotADataset, match=str(tmp_path)):
        load_split(tmp_path)


def test_list_images_numeric_order(tmp_path: Path) -> None:
    for name in ("10.jpg", "2.png", "1.jpg", "b.jpg", "a.jpg", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["1.jpg", "2.png", "10.jpg", "a.jpg", "b.jpg"]


def _coarse_dataset(root: Path, yaml_text: str) -> None:
    """tiny_dataset plus a BI-RADS 4 folder (4类) whose labels carry the coarse dataset's own ids."""
    cla = root / "train" / "cla"
    for stem in ("20", "21"):
        write_image(cla / "4类" / "images" / f"{stem}.jpg", int(stem))
        write_label(cla / "4类" / "labels" / f"{stem}.txt", "3 0.4 0.6 0.2 0.1")
    (root / "dataset.yaml").write_text(yaml_text)


def test_coarse_labels_give_the_allowed_classes(tiny_dataset: Path) -> None:
    _coarse_dataset(tiny_dataset, "coarse_labels:\n  '4': [4A, 4B, 4C]\n")
    scan, config = load_split(tiny_dataset, "train", "cla")
    assert scan.problems == []
    assert config.coarse_labels == {"4": ("4A", "4B", "4C")}
    by_name = {s.path.name: s for s in scan.samples}
    assert (by_name["20.jpg"].label, by_name["20.jpg"].allowed) == (None, (2, 3, 4))
    assert by_name["20.jpg"].box == (0.4, 0.6, 0.2, 0.1)
    assert (by_name["3.jpg"].label, by_name["3.jpg"].allowed) == (2, None)
    assert [config.class_name(by_name[n]) for n in ("1.jpg", "3.jpg", "21.jpg")] == ["2", "4A", "4"]


def test_a_folder_without_coarse_labels_is_still_unknown(tiny_dataset: Path) -> None:
    _coarse_dataset(tiny_dataset, "classes: ['2', '3', '4A', '4B', '4C', '5']\n")
    scan, _ = load_split(tiny_dataset, "train", "cla")
    assert [(p.path.name, p.kind) for p in scan.problems] == [("4类", "unknown class folder")]
    assert all(s.allowed is None for s in scan.samples)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("coarse_labels: ['4A', '4B']\n", "must map a folder name"),
        ("coarse_labels: {'4': []}\n", "must list the classes it allows"),
        ("coarse_labels: {'4': [4A, 4D]}\n", r"allows \['4D'\], not among the classes"),
        ("coarse_labels: {'4a': [4A, 4B]}\n", "names a class of"),
    ],
)
def test_bad_coarse_labels_name_the_file(tiny_dataset: Path, yaml_text: str, message: str) -> None:
    _coarse_dataset(tiny_dataset, yaml_text)
    with pytest.raises(ValueError, match=message) as info:
        load_split(tiny_dataset, "train", "cla")
    assert "dataset.yaml" in str(info.value)
