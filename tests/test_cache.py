"""The RAM image cache: same tensors as decoding every epoch, one preprocessing for training and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import project.data.cache as cache_module
from project.data.cache import UnreadableImages
from project.data.classes import BIRADS_CLASSES
from project.data.datasets import CutMixConfig, LesionDataset
from project.data.layout import Sample, load_split
from project.data.transforms import AugmentConfig, Preprocess
from project.predict import ImageFolderDataset
from project.tasks import create_task
from project.training import cache_images

CLA = create_task("cla", BIRADS_CLASSES)
NO_AUGMENTATION = AugmentConfig(hflip=0, affine=0, brightness_contrast=0, blur=0, coarse_dropout=0)


def _samples(root: Path, count: int = 24) -> list[Sample]:
    scan, _ = load_split(root, "train", "cla")
    return scan.samples[:count]


def _pair(samples: list[Sample], preprocess: Preprocess, **kwargs) -> tuple[LesionDataset, LesionDataset]:
    """The same dataset twice, the second with its cache filled; both augmentation streams seeded alike."""
    plain, cached = (LesionDataset(samples, preprocess, CLA, **kwargs) for _ in range(2))
    cached.cache_images()
    plain.reseed(7)
    cached.reseed(7)
    return plain, cached


def test_cached_training_data_equals_decoding_every_epoch(phantom_small: Path) -> None:
    preprocess = Preprocess(img_size=48)
    plain, cached = _pair(_samples(phantom_small), preprocess, augment=AugmentConfig(),
                          cutmix=CutMixConfig(p=0.5), seed=3)
    assert cached.cache.images.shape == (len(cached), 48, 48, 3)
    for _epoch in range(2):
        for index in range(len(plain)):
            (image_a, target_a), (image_b, target_b) = plain[index], cached[index]
            assert torch.equal(image_a, image_b) and torch.equal(target_a, target_b)


def test_training_preprocesses_exactly_as_prediction(phantom_small: Path) -> None:
    samples = _samples(phantom_small, 6)
    preprocess = Preprocess(img_size=40, clahe=True)
    _, cached = _pair(samples, preprocess, augment=NO_AUGMENTATION)
    predicted = ImageFolderDataset([s.path for s in samples], preprocess)
    for index in range(len(samples)):
        assert torch.equal(cached[index][0], predicted[index][1])


def test_cached_images_cannot_be_changed_through_the_dataset(phantom_small: Path) -> None:
    dataset = LesionDataset(_samples(phantom_small, 4), Preprocess(img_size=32), CLA)
    dataset.cache_images()
    before = dataset.cache.images.copy()
    image, _, _ = dataset.load(0)
    image[:] = 0
    assert np.array_equal(dataset.cache.images, before)


def test_the_cache_lists_every_unreadable_image(phantom_small: Path, tmp_path: Path) -> None:
    empty, text = tmp_path / "empty.png", tmp_path / "text.jpg"
    empty.write_bytes(b"")
    text.write_text("not an image")
    samples = [*_samples(phantom_small, 3), Sample(text, label=0), Sample(empty, label=1)]
    with pytest.raises(UnreadableImages) as caught:
        LesionDataset(samples, Preprocess(img_size=32), CLA).cache_images()
    assert [error.path for error in caught.value.errors] == [empty, text]
    assert str(empty) in str(caught.value) and str(text) in str(caught.value)


def test_training_skips_the_cache_when_memory_is_short(
    phantom_small: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = LesionDataset(_samples(phantom_small, 8), Preprocess(img_size=64), CLA)
    monkeypatch.setattr(cache_module, "available_memory", lambda: 2 * 8 * 64 * 64 * 3 - 1)
    cache_images([dataset], phantom_small)
    assert dataset.cache is None and "image cache off" in capsys.readouterr().err
    monkeypatch.setattr(cache_module, "available_memory", lambda: 2 * 8 * 64 * 64 * 3)
    cache_images([dataset], phantom_small)
    assert dataset.cache is not None and len(dataset.cache) == 8


def test_augmentation_follows_the_seed_without_workers(phantom_small: Path) -> None:
    samples = _samples(phantom_small, 4)

    def augmented(seed: int) -> torch.Tensor:
        dataset = LesionDataset(samples, Preprocess(img_size=32), CLA, AugmentConfig(), seed=seed)
        return torch.stack([dataset[index][0] for index in range(len(samples))])

    assert torch.equal(augmented(5), augmented(5))
    assert not torch.equal(augmented(5), augmented(6))
