"""BrEaST adapter: a synthetic copy of the layout (spreadsheet, PNGs, masks) and the real data when present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from project.adapters.breast import CLASSES, IMAGE_DIR, AdapterError, convert_breast, main
from project.data.layout import load_split, parse_label_file
from project.doctor import main as doctor_main

BREAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "breast-lesions-usg"
SHEET = "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx"
WIDTH, HEIGHT = 64, 48
# (BIRADS as the spreadsheet writes it, Shape, Margin, Calcifications, Classification); two cases per class.
LESIONS = [
    (2, "oval", "circumscribed", "no", "benign"),
    (2, "round", "circumscribed", "no", "benign"),
    (3, "oval", "circumscribed", "no", "benign"),
    (3, "irregular", "not circumscribed - indistinct", "no", "benign"),
    ("4a", "oval", "not circumscribed - microlobulated", "indefinable", "benign"),
    ("4a", "irregular", "circumscribed", "no", "malignant"),
    ("4b", "irregular", "not circumscribed - angular&indistinct", "in a mass", "malignant"),
    ("4b", "oval", "circumscribed", "no", "benign"),
    ("4c", "irregular", "not circumscribed - spiculated", "intraductal", "malignant"),
    ("4c", "irregular", "not circumscribed - indistinct", "no", "malignant"),
    (5, "irregular", "not circumscribed - spiculated&angular", "in a mass", "malignant"),
    (5, "irregular", "not circumscribed - indistinct", "no", "malignant"),
]
NORMALS = (4, 9)  # case numbers of the two BI-RADS 1 rows
BOUNDARY = {"circumscribed": 0}  # every "not circumscribed - ..." is 1
CALCIFICATION = {"no": 0, "in a mass": 1, "intraductal": 1, "indefinable": None}
SHAPE = {"oval": 0, "round": 0, "irregular": 1}


def _lesion_rect(case: int) -> tuple[int, int, int, int]:
    """Pixel x, y, width, height of case `case`'s tumour, a different rectangle per case."""
    return 3 + case, 2 + case // 2, 10 + case, 8 + case % 5


def _rows() -> list[dict[str, object]]:
    rows, lesions = [], iter(LESIONS)
    for case in range(1, len(LESIONS) + len(NORMALS) + 1):
        if case in NORMALS:
            birads, shape, margin, calc = 1, "not applicable", "not applicable", "not applicable"
            pathology, verification = "normal", "not applicable"
        else:
            birads, shape, margin, calc, pathology = next(lesions)
            verification = "confirmed by biopsy"
        rows.append({
            "CaseID": case, "Image_filename": f"case{case:03d}.png",
            "Mask_tumor_filename": None if case in NORMALS else f"case{case:03d}_tumor.png",
            "Mask_other_filename": None, "Pixel_size": 0.0078, "Age": 50, "Shape": shape, "Margin": margin,
            "Calcifications": calc, "BIRADS": birads, "Verification": verification, "Diagnosis": "not applicable",
            "Classification": pathology,
        })
    return rows


def _write_source(src: Path, rows: list[dict[str, object]]) -> None:
    images = src / IMAGE_DIR
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for row in rows:
        grey = rng.integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)
        alpha = np.full_like(grey, 255)
        cv2.imwrite(str(images / str(row["Image_filename"])), np.dstack([grey, grey, grey, alpha]))
        if row["Mask_tumor_filename"]:
            x, y, w, h = _lesion_rect(int(row["CaseID"]))
            mask = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
            cv2.rectangle(mask, (x, y), (x + w - 1, y + h - 1), (255, 255, 255, 255), -1)
            cv2.imwrite(str(images / str(row["Mask_tumor_filename"])), mask)
    with pd.ExcelWriter(src / SHEET) as writer:
        pd.DataFrame(rows).to_excel(writer, sheet_name="clinical data", index=False)
        dictionary = pd.DataFrame({"Column": ["BIRADS"], "Meaning": ["category"]})
        dictionary.to_excel(writer, sheet_name="Data Dictionary", index=False)


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, list[dict[str, object]]]:
    rows = _rows()
    _write_source(tmp_path / "breast", rows)
    return tmp_path / "breast", rows


def _lesions(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in rows if r["BIRADS"] != 1]


def test_class_folders_and_boxes_from_masks(source, tmp_path: Path) -> None:
    src, rows = source
    out = tmp_path / "out"
    summary = convert_breast(src, out, folds=2)
    assert summary.per_class == dict.fromkeys(CLASSES, 2) and summary.images == 12
    assert sorted((out / "train" / "cla").iterdir()) == [out / "train" / "cla" / f"{c}类" for c in CLASSES]
    for row in _lesions(rows):
        folder = out / "train" / "cla" / f"{str(row['BIRADS']).upper()}类"
        image = folder / "images" / str(row["Image_filename"])
        assert image.is_symlink() and image.resolve() == (src / IMAGE_DIR / image.name).resolve()
        for mask in (folder / "masks" / image.name, out / "train" / "fea" / "masks" / image.name):
            assert mask.resolve() == (src / IMAGE_DIR / str(row["Mask_tumor_filename"])).resolve()
        [(class_id, (cx, cy, w, h))] = parse_label_file(folder / "labels" / f"{image.stem}.txt")
        assert class_id == CLASSES.index(str(row["BIRADS"]).upper()) + 1
        np.testing.assert_allclose([(cx - w / 2) * WIDTH, (cy - h / 2) * HEIGHT, w * WIDTH, h * HEIGHT],
                                   _lesion_rect(int(row["CaseID"])), atol=1e-3)


def test_feature_files_follow_the_mapping_and_direction_is_absent(source, tmp_path: Path) -> None:
    src, rows = source
    out = tmp_path / "out"
    summary = convert_breast(src, out, folds=2)
    fea = out / "train" / "fea"
    folders = ["boundary_labels", "calcification_labels", "images", "masks", "shape_labels"]
    assert sorted(p.name for p in fea.iterdir()) == folders
    assert summary.per_feature == {
        "boundary": {"0": 5, "1": 7}, "calcification": {"0": 8, "1": 3, "unknown": 1}, "shape": {"0": 5, "1": 7},
    }
    for row in _lesions(rows):
        stem = Path(str(row["Image_filename"])).stem
        cla_box = parse_label_file(next((out / "train" / "cla").glob(f"*/labels/{stem}.txt")))[0][1]
        expected = {
            "boundary": BOUNDARY.get(str(row["Margin"]), 1),
            "calcification": CALCIFICATION[str(row["Calcifications"])],
            "shape": SHAPE[str(row["Shape"])],
        }
        for task, value in expected.items():
            label = fea / f"{task}_labels" / f"{stem}.txt"
            assert label.exists() == (value is not None), (stem, task)
            if value is not None:
                assert parse_label_file(label) == [(value, cla_box)]
    scan, config = load_split(out, "train", "fea")
    assert not scan.problems and len(scan.samples) == 12
    assert {s.features["direction"] for s in scan.samples} == {None}


def test_normal_cases_are_reported_and_left_out(source, tmp_path: Path, capsys) -> None:
    src, _ = source
    out = tmp_path / "out"
    assert main(["--src", str(src), "--out", str(out), "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 normal case(s)" in printed and "case004.png, case009.png" in printed
    written = {p.name for p in out.rglob("case*.png")}
    assert len(written) == 12 and not written & {"case004.png", "case009.png"}


def test_metadata_groups_folds_and_a_clean_doctor(source, tmp_path: Path, capsys) -> None:
    src, rows = source
    out = tmp_path / "out"
    summary = convert_breast(src, out, folds=2, seed=3)
    scan, config = load_split(out, "train", "cla")
    assert not scan.problems and config.classes == CLASSES
    by_name = {str(r["Image_filename"]): r for r in rows}
    for sample in scan.samples:
        row = by_name[sample.path.name]
        assert sample.group == str(row["CaseID"]) and sample.fold in (1, 2)
        assert sample.extra["pathology"] == row["Classification"]
        assert sample.extra["verification"] == "confirmed by biopsy"
        assert sample.extra["birads"] == str(row["BIRADS"]).upper()
    # Stratified by BI-RADS: each fold holds one case of each class.
    assert summary.per_fold == {"1": 6, "2": 6}
    for fold in (1, 2):
        assert sorted(config.classes[s.label] for s in scan.samples if s.fold == fold) == list(CLASSES)
    assert "Pawłowska" in (out / "dataset.yaml").read_text(encoding="utf-8")
    assert doctor_main([str(out)]) == 0, capsys.readouterr().out


def test_bad_input_names_the_file_and_row(source, tmp_path: Path) -> None:
    src, rows = source
    (src / IMAGE_DIR / "case003_tumor.png").write_bytes(b"not a png")
    with pytest.raises(AdapterError, match="case003_tumor.png: tumour mask: not a recognised image format"):
        convert_breast(src, tmp_path / "a", folds=2)
    cv2.imwrite(str(src / IMAGE_DIR / "case003_tumor.png"), np.zeros((HEIGHT, WIDTH), np.uint8))
    with pytest.raises(AdapterError, match="case003_tumor.png: tumour mask is empty"):
        convert_breast(src, tmp_path / "b", folds=2)
    rows[4]["Margin"] = "fuzzy"
    (src / SHEET).unlink()
    _write_source(tmp_path / "c", rows)
    with pytest.raises(AdapterError, match=r"xlsx: row 6: Margin 'fuzzy' is not one of"):
        convert_breast(tmp_path / "c", tmp_path / "d", folds=2)
    with pytest.raises(AdapterError, match="expected one clinical-data .xlsx"):
        convert_breast(src, tmp_path / "e", folds=2)
    assert main(["--src", str(src), "--out", str(tmp_path / "f")]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


@pytest.mark.skipif(not BREAST.is_dir(), reason=f"BrEaST-Lesions_USG not found at {BREAST}")
def test_real_data_counts(tmp_path: Path) -> None:
    summary = convert_breast(BREAST, tmp_path / "breast")
    assert summary.per_class == {"2": 30, "3": 37, "4A": 44, "4B": 46, "4C": 49, "5": 46}
    assert summary.per_feature == {
        "boundary": {"0": 115, "1": 137}, "calcification": {"0": 225, "1": 25, "unknown": 2},
        "shape": {"0": 112, "1": 140},
    }
    assert len(summary.normals) == 4 and sum(int(n) for n in summary.per_fold.values()) == 252
    scan, _ = load_split(tmp_path / "breast", "train", "cla")
    assert not scan.problems and all(s.box is not None and s.box[2] > 0 for s in scan.samples)
    assert doctor_main([str(tmp_path / "breast"), "--workers", "2"]) == 0
