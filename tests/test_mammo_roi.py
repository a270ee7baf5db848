"""Breast ROI crop: keeps the whole breast, drops the background and labels, flips, fits the size."""

from __future__ import annotations

import numpy as np
import pytest

from project.mammo.phantom import synthetic_mammogram
from project.mammo.roi import breast_mask, crop_breast, to_uint8

CASES = [(seed, lat, view) for seed in range(3) for lat in ("L", "R") for view in ("CC", "MLO")]


def _contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def _background_kept(picture, box) -> float:  # type: ignore[no-untyped-def]
    x0, y0, x1, y1 = box
    background = ~picture.breast_mask
    return background[y0:y1, x0:x1].sum() / background.sum()


@pytest.mark.parametrize(("seed", "laterality", "view"), CASES)
def test_crop_keeps_whole_breast_and_drops_background(seed: int, laterality: str, view: str) -> None:
    picture = synthetic_mammogram(np.random.default_rng(seed), 240, 200, laterality, view, cancer=seed == 1)
    out, info = crop_breast(picture.image, size=(128, 64), laterality=laterality)
    assert info.found
    assert _contains(info.box, picture.breast_box), (info.box, picture.breast_box)
    assert _background_kept(picture, info.box) < 0.35
    assert not _contains(info.box, picture.label_box)  # the burnt-in label is not the breast
    if picture.lesion_box is not None:
        assert _contains(info.box, picture.lesion_box)
    assert out.shape == (128, 64) and out.dtype == picture.image.dtype
    assert info.flipped == (laterality == "R")
    left, right = out[:, :32].sum(), out[:, 32:].sum()
    assert left > right  # chest wall on the left


def test_aspect_ratio_kept_and_padded() -> None:
    picture = synthetic_mammogram(np.random.default_rng(5), 300, 240, "L", "CC", cancer=False)
    out, info = crop_breast(picture.image, size=(100, 100))
    x0, y0, x1, y1 = info.box
    h, w = info.resized
    assert abs(w / h - (x1 - x0) / (y1 - y0)) < 0.03
    assert max(h, w) == 100
    if w < 100:
        assert np.all(out[:, w:] == 0)  # padding to the right of the breast
    assert info.offset[0] == 0


def test_tolerates_big_bright_label_and_uint16() -> None:
    picture = synthetic_mammogram(np.random.default_rng(7), 240, 200, "R", "MLO", cancer=False)
    image = (picture.image * 65535).astype(np.uint16)
    image[5:60, 5:70] = 65535  # a large burnt-in annotation, brighter than any tissue
    out, info = crop_breast(image, size=(96, 48), laterality="R")
    assert out.dtype == np.uint16
    assert _contains(info.box, picture.breast_box)
    assert not _contains(info.box, (5, 5, 70, 60))


def test_clean_removes_label_inside_crop_box() -> None:
    picture = synthetic_mammogram(np.random.default_rng(2), 240, 200, "L", "CC", cancer=False)
    image = picture.image.copy()
    x0, y0, x1, y1 = picture.breast_box
    image[y0 + 2 : y0 + 8, x1 - 6 : x1 - 1] = 0  # make room so the marker does not touch tissue
    marker = (max(0, x1 - 25), max(0, y0 - 12), x1 - 15, y0 - 2)  # a small marker near the breast
    image[marker[1] : marker[3], marker[0] : marker[2]] = 1.0
    kept, _ = crop_breast(image, size=None, clean=False, margin=0.08)
    cleaned, info = crop_breast(image, size=None, clean=True, margin=0.08)
    assert _contains(info.box, picture.breast_box)
    assert _contains(info.box, marker)  # the marker lies inside the crop box ...
    bx, by = info.box[0], info.box[1]
    region = (slice(marker[1] - by, marker[3] - by), slice(marker[0] - bx, marker[2] - bx))
    assert np.all(kept[region] == 1.0)
    assert np.all(cleaned[region] == 0.0)  # ... and clean=True blanks it


def test_flip_modes_and_empty_image() -> None:
    picture = synthetic_mammogram(np.random.default_rng(1), 160, 128, "R", "CC", cancer=False)
    _, auto = crop_breast(picture.image, laterality="L")  # the image decides over a wrong tag
    assert auto.flipped and auto.side == "right"
    _, by_tag = crop_breast(picture.image, laterality="L", flip="laterality")
    assert not by_tag.flipped
    _, never = crop_breast(picture.image, laterality="R", flip="none")
    assert not never.flipped
    blank = np.zeros((64, 48), np.float32)
    out, info = crop_breast(blank, size=(32, 16), laterality="R")
    assert not info.found and info.box == (0, 0, 48, 64) and info.flipped
    assert out.shape == (32, 16)
    mask, found = breast_mask(blank)
    assert not found and mask.sum() == 0
    assert to_uint8(np.array([[0.0, 1.0]])).tolist() == [[0, 255]]
