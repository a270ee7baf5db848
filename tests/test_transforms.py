"""CutBlack, lesion-box CutMix, the training dataset's targets and the preprocessing record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.data.classes import BIRADS_CLASSES, FEATURE_TASKS
from project.data.datasets import CutMixConfig, LesionDataset
from project.data.layout import Sample
from project.data.transforms import (
    AugmentConfig,
    CutBlackConfig,
    Preprocess,
    black_border_crop,
    crop,
    crop_box,
    paste_box,
    yolo_to_xyxy,
)
from project.tasks import create_task

CLA = create_task("cla", BIRADS_CLASSES)


def _framed(rng: np.random.Generator) -> np.ndarray:
    """A 100x120 bright speckled image inside a black frame: rows 10..79, columns 15..104."""
    image = np.zeros((100, 120, 3), np.uint8)
    image[10:80, 15:105] = rng.integers(60, 255, (70, 90, 1), dtype=np.uint8)
    image[3:6, 40:60] = 255  # burnt-in text on the black border
    return image


def test_cut_black_removes_the_frame_exactly() -> None:
    image = _framed(np.random.default_rng(0))
    bounds = black_border_crop(image, CutBlackConfig())
    assert bounds == (10, 80, 15, 105)
    assert np.array_equal(crop(image, bounds), image[10:80, 15:105])
    box = crop_box((60 / 120, 45 / 100, 30 / 120, 20 / 100), bounds, image.shape[:2])
    assert box == pytest.approx((45 / 90, 35 / 70, 30 / 90, 20 / 70))


def test_cut_black_leaves_a_clean_image_unchanged() -> None:
    image = np.random.default_rng(1).integers(30, 255, (50, 60, 3), dtype=np.uint8)
    bounds = black_border_crop(image, CutBlackConfig())
    assert np.array_equal(crop(image, bounds), image)
    assert crop_box((0.5, 0.5, 0.2, 0.2), bounds, image.shape[:2]) == (0.5, 0.5, 0.2, 0.2)


def test_paste_box_replaces_exactly_the_target_region() -> None:
    target = np.zeros((40, 40, 3), np.uint8)
    source = np.full((40, 40, 3), 9, np.uint8)
    source[10:20, 10:30] = 200
    mixed = paste_box(target, (0.25, 0.5, 0.75, 1.0), source, (0.25, 0.25, 0.75, 0.5))
    assert (mixed[20:40, 10:30] == 200).all()
    mixed[20:40, 10:30] = 0
    assert not mixed.any() and not target.any()


def _write(path: Path, value: int, box_pixels: tuple[int, int, int, int]) -> None:
    image = np.full((64, 64), 40, np.uint8)
    y0, y1, x0, x1 = box_pixels
    image[y0:y1, x0:x1] = value
    Image.fromarray(image).save(path)


def test_box_cutmix_pastes_the_other_lesion_with_its_label(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", 250, (8, 24, 8, 40))
    _write(tmp_path / "b.png", 120, (32, 64, 16, 48))
    samples = [
        Sample(tmp_path / "a.png", label=4, box=(24 / 64, 16 / 64, 32 / 64, 16 / 64)),
        Sample(tmp_path / "b.png", label=1, box=(32 / 64, 48 / 64, 32 / 64, 32 / 64)),
    ]
    preprocess = Preprocess(img_size=64, mean=(0, 0, 0), std=(1, 1, 1), cut_black=None)
    dataset = LesionDataset(samples, preprocess, CLA, cutmix=CutMixConfig(p=1.0))
    pasted = {}
    for _ in range(20):  # the partner is drawn at random; collect the B <- A case
        image, label = dataset[1]
        if int(label) == 4:
            pasted["image"] = image
    image = pasted["image"]
    assert torch.allclose(image[:, 32:64, 16:48], torch.tensor(250 / 255))
    assert torch.allclose(image[:, :32, :], torch.tensor(40 / 255))


def test_feature_targets_keep_unknown_as_nan(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", 100, (0, 8, 0, 8))
    sample = Sample(tmp_path / "a.png", features={"boundary": 1, "calcification": None, "direction": 0, "shape": 1})
    _, target = LesionDataset([sample], Preprocess(img_size=32), create_task("fea", FEATURE_TASKS))[0]
    assert target[0] == 1 and torch.isnan(target[1]) and target[2] == 0 and target[3] == 1


def test_preprocess_round_trips_through_a_dict() -> None:
    preprocess = Preprocess(img_size=96, cut_black=CutBlackConfig(12, 0.7), clahe=True)
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    assert Preprocess.from_dict(Preprocess(cut_black=None).to_dict()).cut_black is None
    letterbox = Preprocess(keep_aspect=True)
    assert Preprocess.from_dict(letterbox.to_dict()) == letterbox
    older = Preprocess().to_dict()
    del older["keep_aspect"]
    assert Preprocess.from_dict(older).keep_aspect is False


def test_yolo_to_xyxy_clips_to_the_image() -> None:
    assert yolo_to_xyxy((0.1, 0.5, 0.4, 0.2)) == pytest.approx((0.0, 0.4, 0.3, 0.6))


def test_the_pasted_lesion_is_augmented_with_its_new_image(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", 250, (8, 24, 8, 24))
    _write(tmp_path / "b.png", 120, (8, 24, 8, 24))
    box = (16 / 64, 16 / 64, 16 / 64, 16 / 64)
    samples = [Sample(tmp_path / "a.png", label=4, box=box), Sample(tmp_path / "b.png", label=1, box=box)]
    preprocess = Preprocess(img_size=64, mean=(0, 0, 0), std=(1, 1, 1), cut_black=None)
    flip_only = AugmentConfig(hflip=1.0, affine=0, brightness_contrast=0, blur=0, coarse_dropout=0)
    dataset = LesionDataset(samples, preprocess, CLA, flip_only, CutMixConfig(p=1.0))
    for _ in range(20):  # the partner is drawn at random; collect the B <- A case
        image, label = dataset[1]
        if int(label) == 4:
            break
    assert int(label) == 4
    assert torch.allclose(image[:, 8:24, 40:56], torch.tensor(250 / 255))
    assert torch.allclose(image[:, 8:24, 8:24], torch.tensor(40 / 255))
