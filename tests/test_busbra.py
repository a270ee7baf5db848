"""BUS-BRA adapter on a 12-image subset of ../shared/data/busbra-dev: layout, boxes, metadata, folds."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from project.adapters.busbra import CLASSES, BusbraError, convert_busbra, main
from project.data.layout import load_config, load_split, parse_label_file
from project.data.splits import kfold_indices

BUSBRA = Path(__file__).resolve().parents[2] / "shared" / "data" / "busbra-dev"
# Three images per official fold, all four BI-RADS classes, both pathologies, a patient with two
# images, and bus_0856-l and bus_0990-l whose real heights (353, 352) differ from their CSV rows (405, 354).
SUBSET = (
    "bus_0001-l", "bus_0001-r", "bus_0856-l",
    "bus_0003-l", "bus_0003-r", "bus_0990-l",
)

pytestmark = pytest.mark.skipif(
    not (BUSBRA / "bus_data.csv").is_file(), reason=f"BUS-BRA development data not found at {BUSBRA}"
)


def _rows() -> list[dict[str, str]]:
    with (BUSBRA / "bus_data.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _subset_rows() -> list[dict[str, str]]:
    """The SUBSET rows plus one image of each (fold, class) pair they miss, up to 12 rows."""
    rows = _rows()
    chosen = [r for r in rows if r["ID"] in SUBSET]
    for fold in "1234":
        for birads in CLASSES:
            if len(chosen) < 12 and not any(r["kFold"] == fold and r["BIRADS"] == birads for r in chosen):
                chosen += [r for r in rows if r["kFold"] == fold and r["BIRADS"] == birads][:1]
    return chosen


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mini_source(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    """A BUS-BRA-shaped folder with 12 rows of bus_data.csv and their images."""
    rows = _subset_rows()
    src = tmp_path / "busbra"
    (src / "Images").mkdir(parents=True)
    (src / "Masks").mkdir()
    for row in rows:
        shutil.copyfile(BUSBRA / "Images" / f"{row['ID']}.png", src / "Images" / f"{row['ID']}.png")
    for row in rows[1:]:  # the first image has no mask
        mask = f"mask_{row['ID'].removeprefix('bus_')}.png"
        shutil.copyfile(BUSBRA / "Masks" / mask, src / "Masks" / mask)
    with (src / "bus_data.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return src, rows


def test_subset_covers_classes_folds_and_a_size_mismatch(mini_source) -> None:
    _, rows = mini_source
    assert len(rows) == 12
    assert {r["BIRADS"] for r in rows} == set(CLASSES)
    assert {r["kFold"] for r in rows} == set("1234")
    assert {r["Pathology"] for r in rows} == {"benign", "malignant"}


def test_layout_labels_and_config(mini_source, tmp_path: Path) -> None:
    src, rows = mini_source
    hashes = {p.name: _sha256(p) for p in (src / "Images").iterdir()}
    out = tmp_path / "converted"
    summary = convert_busbra(src, out)

    assert summary.images == 12 and summary.placed == {"symlink": 12} and summary.masks == 11
    assert [(m.image_id, m.real_size) for m in summary.size_mismatches] == [
        ("bus_0856-l", (387, 353)), ("bus_0990-l", (540, 352))
    ]
    for row in rows:
        folder = out / "train" / "cla" / f"{row['BIRADS']}类"
        image = folder / "images" / f"{row['ID']}.png"
        assert image.is_symlink() and image.resolve() == (src / "Images" / image.name).resolve()
        mask = folder / "masks" / image.name
        has_mask = row is not rows[0]
        assert mask.exists() == has_mask
        if has_mask:
            assert mask.resolve().name == f"mask_{row['ID'].removeprefix('bus_')}.png"
        [(class_id, (cx, cy, w, h))] = parse_label_file(folder / "labels" / f"{row['ID']}.txt")
        assert class_id == CLASSES.index(row["BIRADS"]) + 1
        width, height = Image.open(image).size
        x, y, bw, bh = json.loads(row["BBOX"])
        np.testing.assert_allclose(
            [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], [x, y, bw, bh], atol=1e-3
        )
    config = load_config(out)
    assert config.classes == CLASSES
    assert (config.metadata, config.group_column, config.fold_column) == ("metadata.csv", "patient", "fold")
    assert "Gómez-Flores" in (out / "dataset.yaml").read_text(encoding="utf-8")
    with (out / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        metadata = {r["image"]: r for r in csv.DictReader(handle)}
    header = ["image", "patient", "lesion", "fold", "pathology", "histology", "device", "side"]
    assert list(next(iter(metadata.values()))) == header
    for row in rows:
        entry = metadata[f"{row['ID']}.png"]
        assert (entry["patient"], entry["lesion"], entry["fold"], entry["pathology"]) == (
            row["Case"], row["Case"], row["kFold"], row["Pathology"])
        assert (entry["histology"], entry["device"], entry["side"]) == (row["Histology"], row["Device"], row["Side"])
    assert {p.name: _sha256(p) for p in (src / "Images").iterdir()} == hashes
    samples = {s.path.name: s for s in load_split(out, "train", "cla")[0].samples}
    assert sum(s.mask is not None for s in samples.values()) == 11
    assert samples[f"{rows[0]['ID']}.png"].mask is None


def test_load_split_reads_groups_folds_and_official_kfold(mini_source, tmp_path: Path) -> None:
    src, rows = mini_source
    convert_busbra(src, tmp_path / "converted")
    scan, config = load_split(tmp_path / "converted", "train", "cla")
    assert not scan.problems
    assert len(config.classes) == 4 and len(scan.samples) == 12
    by_id = {r["ID"]: r for r in rows}
    for sample in scan.samples:
        row = by_id[sample.path.stem]
        assert config.classes[sample.label] == row["BIRADS"]
        assert (sample.group, sample.fold) == (row["Case"], int(row["kFold"]))
        assert sample.extra["pathology"] == row["Pathology"]
    # Both images of patient 1 fall in one fold, and fold i of kfold_indices is official fold i + 1.
    for index, (train, val) in enumerate(kfold_indices(scan.samples, 4, seed=123)):
        assert {scan.samples[i].fold for i in val} == {index + 1}
        assert index + 1 not in {scan.samples[i].fold for i in train}


@pytest.mark.parametrize("mode", ["copy", "hardlink"])
def test_copy_and_hardlink_place_identical_bytes(mini_source, tmp_path: Path, mode: str) -> None:
    src, rows = mini_source
    out = tmp_path / mode
    summary = convert_busbra(src, out, link=mode)
    assert summary.placed == {mode: 12}
    for row in rows[:3]:
        placed = out / "train" / "cla" / f"{row['BIRADS']}类" / "images" / f"{row['ID']}.png"
        source = src / "Images" / placed.name
        assert not placed.is_symlink()
        assert placed.read_bytes() == source.read_bytes()
        assert placed.samefile(source) == (mode == "hardlink")


def test_bad_input_names_the_file(mini_source, tmp_path: Path) -> None:
    src, rows = mini_source
    (src / "Images" / f"{rows[0]['ID']}.png").unlink()
    with pytest.raises(BusbraError, match=f"{rows[0]['ID']}.png: image listed in bus_data.csv not found"):
        convert_busbra(src, tmp_path / "a")
    text = (src / "bus_data.csv").read_text(encoding="utf-8")
    (src / "bus_data.csv").write_text(text.replace(f"{rows[1]['ID']},{rows[1]['Case']},", f"{rows[1]['ID']},,"))
    with pytest.raises(BusbraError, match=r"bus_data.csv:3: empty column\(s\) \['Case'\]"):
        convert_busbra(src, tmp_path / "b")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("x")
    (src / "bus_data.csv").write_text(text)
    with pytest.raises(BusbraError, match="not an empty folder"):
        convert_busbra(src, occupied)


def test_cli_prints_the_summary(mini_source, tmp_path: Path, capsys) -> None:
    src, _ = mini_source
    assert main(["--src", str(src), "--out", str(tmp_path / "cli"), "--copy"]) == 0
    printed = capsys.readouterr().out
    assert "12 images" in printed and "copy: 12" in printed and "bus_0856-l" in printed
    assert main(["--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
