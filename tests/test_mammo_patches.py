"""Patch extraction: lesion patches hold the lesion, background patches lie in the breast and miss it."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from project.mammo.patches import (
    Lesion,
    PatchDataError,
    PatchSettings,
    crop_patch,
    extract_patches,
    main,
    write_patches,
)
from project.mammo.phantom import synthetic_mammogram
from project.mammo.roi import breast_mask

SETTINGS = PatchSettings(size=32, per_lesion=5, background=8, jitter=0.25, min_breast=0.6, seed=0)
LESION = (60, 128, 10)


def _image(seed: int = 0, lesion: tuple[int, int, int] | None = LESION) -> np.ndarray:
    picture = synthetic_mammogram(np.random.default_rng(seed), 256, 192, "L", "CC", cancer=False)
    image = np.rint(picture.image * 200).astype(np.uint8)
    if lesion is not None:
        cv2.circle(image, lesion[:2], lesion[2], 255, thickness=-1)
    return image


def test_crop_patch_pads_outside_the_image() -> None:
    image = np.arange(1, 101, dtype=np.uint8).reshape(10, 10)
    patch = crop_patch(image, 1, 2, 6)
    assert patch.shape == (6, 6)
    assert (patch[:, :2] == 0).all() and (patch[:1] == 0).all()
    assert patch[1, 2] == image[0, 0] and patch[5, 5] == image[4, 3]


def test_lesion_patches_hold_the_lesion() -> None:
    image = _image()
    x, y, r = LESION
    lesion = Lesion.from_circle(x, y, r, "malignant", "SPIC")
    patches = extract_patches(image, [lesion], SETTINGS, np.random.default_rng(1))
    patches = [p for p in patches if p.label != "background"]
    assert len(patches) == 5 and {p.label for p in patches} == {"malignant"} and {p.kind for p in patches} == {"SPIC"}
    assert len({(p.cx, p.cy) for p in patches}) == 5  # shifted at random
    for p in patches:
        assert abs(p.cx - x) <= 8 and abs(p.cy - y) <= 8  # jitter 0.25 of 32 px
        assert p.pixels.shape == (32, 32) and p.pixels[y - p.cy + 16, x - p.cx + 16] == 255


def test_background_patches_are_breast_and_miss_the_lesion() -> None:
    image = _image()
    lesion = Lesion.from_circle(*LESION, "benign")
    mask, found = breast_mask(image)
    assert found
    background = [p for p in extract_patches(image, [lesion], SETTINGS, np.random.default_rng(2))
                  if p.label == "background"]
    assert len(background) == 8
    for p in background:
        x0, y0 = p.cx - 16, p.cy - 16
        assert not (x0 < lesion.box[2] and lesion.box[0] < x0 + 32 and y0 < lesion.box[3] and lesion.box[1] < y0 + 32)
        assert (crop_patch(mask, p.cx, p.cy, 32) > 0).mean() >= 0.6
        assert (p.pixels < 255).all()  # no lesion pixel
    again = [(p.cx, p.cy) for p in extract_patches(image, [lesion], SETTINGS, np.random.default_rng(2))]
    assert again[5:] == [(p.cx, p.cy) for p in background]


def _prepared(root: Path) -> Path:
    rows = [("a1", "p1", "0", LESION), ("a2", "p1", "0", None), ("b1", "p2", "1", None)]
    for k, (image, _, _, lesion) in enumerate(rows):
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{image}.png"), _image(k, lesion))
    (root / "manifest.csv").write_text("image,patient,fold,png\n" + "".join(
        f"{image},{patient},{fold},images/{image}.png\n" for image, patient, fold, _ in rows))
    (root / "lesions.csv").write_text("image,class,severity,x,y,radius\n"
                                      f"a1,CIRC,malignant,{LESION[0]},{LESION[1]},{LESION[2]}\n"
                                      "b1,CALC,benign,,,\n")
    return root


def test_write_patches_from_a_prepared_folder(tmp_path: Path) -> None:
    counts = write_patches(_prepared(tmp_path / "data"), tmp_path / "out", SETTINGS)
    # a1: 5 lesion + 8 background; a2: 8 background; b1: a finding without location, so none
    assert counts == {"malignant": 5, "background": 16}
    with (tmp_path / "out" / "patches.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 21 and {r["image"] for r in rows} == {"a1", "a2"}
    assert {(r["label"], r["cancer"], r["class"]) for r in rows if r["image"] == "a1" and r["label"] != "background"} \
        == {("malignant", "1", "CIRC")}
    assert all(r["fold"] == "0" and r["patient"] == "p1" for r in rows)
    patch = cv2.imread(str(tmp_path / "out" / rows[0]["patch"]), cv2.IMREAD_UNCHANGED)
    assert patch.shape == (32, 32) and patch.dtype == np.uint8
    second = write_patches(tmp_path / "data", tmp_path / "again", SETTINGS)
    assert second == counts and (tmp_path / "again" / "patches.csv").read_text() == \
        (tmp_path / "out" / "patches.csv").read_text()


def test_bad_lesion_rows_are_named(tmp_path: Path) -> None:
    data = _prepared(tmp_path / "data")
    (data / "lesions.csv").write_text("image,severity,x,y,radius\na1,malignant,12,x,3\n")
    with pytest.raises(PatchDataError, match=r"lesions\.csv:2: y 'x' is not a number"):
        write_patches(data, tmp_path / "out", SETTINGS)
    (data / "lesions.csv").write_text("image,x,y,radius\na1,12,13,3\n")
    assert main(["--data", str(data), "--out", str(tmp_path / "out")]) == 2
