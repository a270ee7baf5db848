"""mini-MIAS adapter: pairs of breasts per woman, bottom-left lesion centres mapped into the crop, patient folds."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from project.adapters.common import AdapterError
from project.adapters.minimias import convert_minimias, group_images, main, parse_line, read_labels
from project.mammo.phantom import synthetic_mammogram
from project.mammo.preprocess import MammoPreprocess

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-mias"
SOURCE_SIZE = 256
LESIONS = {  # image -> (x from the left, row from the top, radius) of a bright disc
    "mdb001": (200, 100, 10),
    "mdb002": (60, 150, 12),
    "mdb004": (70, 120, 8),
}


def _source(root: Path, n_women: int = 4) -> Path:
    """A mini-MIAS-like folder: phantom breasts (even numbers left), discs where labels.txt says."""
    rng = np.random.default_rng(0)
    lines = []
    for number in range(1, 2 * n_women + 1):
        name = f"mdb{number:03d}"
        side = "L" if number % 2 == 0 else "R"
        picture = synthetic_mammogram(rng, SOURCE_SIZE, SOURCE_SIZE, side, "MLO", cancer=False)
        image = np.rint(picture.image * 200).astype(np.uint8)
        if name in LESIONS:
            x, y, r = LESIONS[name]
            cv2.circle(image, (x, y), r, 255, thickness=-1)
            severity = "M" if name == "mdb002" else "B"
            lines.append(f"{name} G CIRC {severity} {x} {SOURCE_SIZE - 1 - y} {r}")
        elif number == 3:
            lines.append(f"{name} D CALC M *NOTE 3* ")
        else:
            lines.append(f"{name} F NORM ")
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_conversion_layout_pairs_and_folds(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    summary = convert_minimias(src, tmp_path / "out", size=(128, 64), folds=2)
    manifest = _csv(tmp_path / "out" / "manifest.csv")
    assert [r["image"] for r in manifest] == [f"mdb{n:03d}" for n in range(1, 9)]
    assert [r["patient"] for r in manifest[:4]] == ["mias001", "mias001", "mias002", "mias002"]
    assert [r["laterality"] for r in manifest[:4]] == ["R", "L", "R", "L"]
    assert [r["label"] for r in manifest[:4]] == ["0", "1", "1", "0"]
    assert [r["pathology"] for r in manifest[:4]] == ["benign", "malignant", "malignant", "benign"]
    assert [r["tissue"] for r in manifest[:5]] == ["G", "G", "D", "G", "F"]
    folds = {r["patient"]: r["fold"] for r in manifest}
    assert all(r["fold"] == folds[r["patient"]] for r in manifest) and set(folds.values()) == {"0", "1"}
    # both cancer women (mias001, mias002) cannot share a fold when stratified
    assert folds["mias001"] != folds["mias002"]
    for row in manifest:
        image = cv2.imread(str(tmp_path / "out" / row["png"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (128, 64) and image.dtype == np.uint8
    assert all(r["flipped"] == str(int(r["laterality"] == "R")) for r in manifest)  # chest wall to the left
    assert MammoPreprocess.from_prepared(tmp_path / "out").size == (128, 64)
    assert summary.images == 8 and summary.women == 4 and summary.women_with_cancer == 2
    assert summary.per_pathology == {"normal": 4, "benign": 2, "malignant": 2}
    assert summary.without_location == ["mdb003"] and summary.side_disagrees == []


def test_lesion_centres_follow_the_crop_flip_and_resize(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    convert_minimias(src, tmp_path / "out", size=(192, 96), folds=2)
    lesions = {r["image"]: r for r in _csv(tmp_path / "out" / "lesions.csv")}
    assert lesions["mdb003"]["x"] == "" and lesions["mdb003"]["cancer"] == "1"
    for name, (_, _, radius) in LESIONS.items():
        row = lesions[name]
        x, y, r = float(row["x"]), float(row["y"]), float(row["radius"])
        image = cv2.imread(str(tmp_path / "out" / "images" / row["patient"] / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        window = np.zeros_like(image, dtype=bool)
        window[max(0, int(y - 3 * r)): int(y + 3 * r) + 1, max(0, int(x - 3 * r)): int(x + 3 * r) + 1] = True
        ys, xs = np.nonzero((image >= 250) & window)
        assert abs(xs.mean() - x) < 1.0 and abs(ys.mean() - y) < 1.0, name
        assert abs(np.sqrt(len(xs) / np.pi) - r) < 1.5 and r < radius  # shrunk with the image


def test_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"labels\.txt:1: class CIRC needs severity B or M, got \['535'\]"):
        parse_line("mdb001 G CIRC 535 425 197", "labels.txt:1")
    with pytest.raises(AdapterError, match="'4x5' is not a whole number"):
        parse_line("mdb001 G CIRC B 4x5 425 197", "labels.txt:1")
    with pytest.raises(AdapterError, match="background 'Q'"):
        parse_line("mdb001 Q NORM", "labels.txt:1")
    src = _source(tmp_path / "src", n_women=2)
    (src / "images" / "mdb004.png").unlink()
    with pytest.raises(AdapterError, match=r"listed in labels\.txt not found: \['mdb004'\]"):
        group_images(read_labels(src / "labels.txt"), src / "images")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert main(["--src", str(_source(tmp_path / "ok")), "--out", str(tmp_path / "busy")]) == 2


@pytest.mark.skipif(not (REAL / "labels.txt").is_file(), reason="../shared/data/mini-mias is not here")
def test_real_minimias(tmp_path: Path) -> None:
    findings = read_labels(REAL / "labels.txt")
    assert len(findings) == 330
    images = group_images(findings, REAL / "images")
    assert len(images) == 322 and len({im.patient for im in images}) == 161
    pathologies = [im.pathology for im in images]
    assert (pathologies.count("normal"), pathologies.count("benign"), pathologies.count("malignant")) == (207, 63, 52)
    summary = convert_minimias(REAL, tmp_path / "out", size=(256, 128), women=2)
    assert summary.images == 4 and summary.side_disagrees == []
    lesion = _csv(tmp_path / "out" / "lesions.csv")[0]
    assert lesion["image"] == "mdb001" and 0 < float(lesion["x"]) < 128 and 0 < float(lesion["y"]) < 256
