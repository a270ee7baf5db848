"""The auxiliary lesion-map head: masks through preprocessing, CutMix and augmentation, its loss, its model, a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from project.data.classes import BIRADS_CLASSES
from project.data.datasets import LESION_MAP_REDUCTION, CutMixConfig, LesionDataset
from project.data.imageio import ImageReadError
from project.data.layout import Sample
from project.data.transforms import AugmentConfig, Preprocess, Preprocessor
from project.losses import UNKNOWN_MAP, ClassificationLoss, LesionMapLoss
from project.models.checkpoint import load_checkpoint
from project.models.factory import create_model, param_groups
from project.tasks import create_task
from project.training import run

CLA = create_task("cla", BIRADS_CLASSES)
NO_AUGMENT = dict(hflip=0, affine=0, brightness_contrast=0, blur=0, coarse_dropout=0)


def _framed_image(path: Path) -> None:
    """100x120 speckle inside a black frame (rows 10..79, columns 15..104) with a bright lesion at rows
    30..49, columns 40..69."""
    image = np.zeros((100, 120), np.uint8)
    image[10:80, 15:105] = np.random.default_rng(0).integers(60, 120, (70, 90), dtype=np.uint8)
    image[30:50, 40:70] = 250
    Image.fromarray(image).save(path)


def _mask(path: Path, shape: tuple[int, int] = (100, 120)) -> None:
    mask = np.zeros(shape, np.uint8)
    mask[30:50, 40:70] = 255
    Image.fromarray(mask).save(path)


def _extent(lesion: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised (x0, y0, x1, y1) of the map's lesion pixels."""
    rows, cols = np.flatnonzero(lesion.any(axis=1)), np.flatnonzero(lesion.any(axis=0))
    side = lesion.shape[0]
    return cols[0] / side, rows[0] / side, (cols[-1] + 1) / side, (rows[-1] + 1) / side


def test_the_lesion_map_follows_the_border_crop(tmp_path: Path) -> None:
    _framed_image(tmp_path / "image.png")
    _mask(tmp_path / "mask.png")
    image, box, lesion = Preprocessor(Preprocess(img_size=90)).with_lesion_map(
        tmp_path / "image.png", (55 / 120, 40 / 100, 30 / 120, 20 / 100), tmp_path / "mask.png")
    expected = ((40 - 15) / 90, (30 - 10) / 70, (70 - 15) / 90, (50 - 10) / 70)  # inside the 70x90 crop
    assert lesion.dtype == np.uint8 and set(np.unique(lesion)) == {0, 1}
    assert _extent(lesion) == pytest.approx(expected, abs=1.5 / 90)
    assert box == pytest.approx(expected, abs=1e-6)
    assert image[lesion == 1].mean() > 220 and image[lesion == 0].mean() < 120  # the lesion's own pixels


def test_letterboxing_keeps_the_lesion_shape_and_the_map_follows(tmp_path: Path) -> None:
    _framed_image(tmp_path / "image.png")
    _mask(tmp_path / "mask.png")
    image, box, lesion = Preprocessor(Preprocess(img_size=90, keep_aspect=True)).with_lesion_map(
        tmp_path / "image.png", (55 / 120, 40 / 100, 30 / 120, 20 / 100), tmp_path / "mask.png")
    # the 70x90 crop keeps its scale and gets 10 black rows above and below
    expected = ((40 - 15) / 90, (30 - 10 + 10) / 90, (70 - 15) / 90, (50 - 10 + 10) / 90)
    assert image.shape == (90, 90, 3) and lesion.shape == (90, 90)
    assert _extent(lesion) == pytest.approx(expected, abs=1.5 / 90)
    assert box == pytest.approx(expected, abs=1e-6)
    assert image[:10].max() == 0 and image[80:].max() == 0 and image[10:80].min() >= 60
    stretched, _ = Preprocessor(Preprocess(img_size=90))(tmp_path / "image.png")
    assert stretched.min() >= 60  # the default fills the square: no padding


def test_a_filled_box_stands_in_for_a_missing_mask(tmp_path: Path) -> None:
    _framed_image(tmp_path / "image.png")
    preprocessor = Preprocessor(Preprocess(img_size=90))
    box = (55 / 120, 40 / 100, 30 / 120, 20 / 100)
    _, box, lesion = preprocessor.with_lesion_map(tmp_path / "image.png", box, None)
    assert _extent(lesion) == pytest.approx(box, abs=1.5 / 90)
    assert preprocessor.with_lesion_map(tmp_path / "image.png", None, None)[2] is None


def test_a_mask_of_another_size_names_the_mask(tmp_path: Path) -> None:
    _framed_image(tmp_path / "image.png")
    _mask(tmp_path / "mask.png", shape=(90, 120))
    with pytest.raises(ImageReadError, match=r"mask\.png: mask is 120x90 px, its image 120x100"):
        Preprocessor(Preprocess(img_size=32)).with_lesion_map(tmp_path / "image.png", None, tmp_path / "mask.png")


def _lesion_samples(tmp_path: Path) -> list[Sample]:
    """Two 64x64 images: a bright lesion in the left half of the first, in the right half of the second."""
    samples = []
    for index, (x0, x1) in enumerate(((8, 24), (40, 56))):
        image = np.full((64, 64), 80, np.uint8)
        image[20:36, x0:x1] = 250
        mask = np.zeros((64, 64), np.uint8)
        mask[20:36, x0:x1] = 255
        Image.fromarray(image).save(tmp_path / f"{index}.png")
        Image.fromarray(mask).save(tmp_path / f"mask{index}.png")
        box = ((x0 + x1) / 128, 28 / 64, 16 / 64, 16 / 64)
        samples.append(Sample(tmp_path / f"{index}.png", label=index, box=box, mask=tmp_path / f"mask{index}.png"))
    return samples


def _lesion_map(target: tuple[torch.Tensor, torch.Tensor], img_size: int) -> torch.Tensor:
    side = img_size // LESION_MAP_REDUCTION
    assert target[1].shape == (side, side)
    return target[1]


def test_the_map_is_flipped_with_the_image(tmp_path: Path) -> None:
    samples = _lesion_samples(tmp_path)
    flip = AugmentConfig(**{**NO_AUGMENT, "hflip": 1.0})
    dataset = LesionDataset(samples[:1], Preprocess(img_size=64, cut_black=None), CLA, flip, lesion_maps=True)
    image, target = dataset[0]
    lesion = _lesion_map(target, 64)
    assert int(target[0]) == 0
    assert lesion[:, 8:].sum() > 0 and lesion[:, :8].sum() == 0  # the lesion moved to the right half
    brightness = torch.nn.functional.avg_pool2d(image[:1][None], LESION_MAP_REDUCTION)[0, 0]
    assert brightness[lesion > 0.5].min() > brightness[lesion < 0.5].max()


def test_box_cutmix_pastes_the_other_lesion_and_its_map(tmp_path: Path) -> None:
    samples = _lesion_samples(tmp_path)
    dataset = LesionDataset(samples, Preprocess(img_size=64, cut_black=None), CLA, cutmix=CutMixConfig(p=1.0),
                            lesion_maps=True)
    classes = set()
    for _ in range(16):  # the other image is drawn at random (itself included)
        image, target = dataset[0]
        classes.add(int(target[0]))
        lesion = _lesion_map(target, 64)
        # Box to box: a lesion fills this image's box (x 8..24, y 20..36), the map with it.
        assert lesion[5:9, 2:6].min() == 1 and lesion.sum() == 16
        assert image[0, 20:36, 8:24].min() > image[0].mean()
    assert classes == {0, 1}  # the pasted lesion brings its class


def test_an_image_without_mask_or_box_has_an_unknown_map(tmp_path: Path) -> None:
    sample = _lesion_samples(tmp_path)[0]
    sample.box = sample.mask = None
    _, (label, lesion) = LesionDataset([sample], Preprocess(img_size=32, cut_black=None), CLA, lesion_maps=True)[0]
    assert int(label) == 0 and lesion.shape == (8, 8) and (lesion == UNKNOWN_MAP).all()


def test_the_loss_adds_the_map_term_only_where_the_map_is_known() -> None:
    torch.manual_seed(0)
    class_loss = ClassificationLoss()
    loss = LesionMapLoss(class_loss, weight=0.5)
    logits, map_logits = torch.randn(2, 3), torch.randn(2, 2, 2)
    lesion = torch.zeros(2, 4, 4)
    lesion[0, :2, :2] = 1  # the top-left cell of the first image is covered, its other cells empty
    lesion[1] = UNKNOWN_MAP
    classes = torch.tensor([1, 2])
    expected_map = F.binary_cross_entropy_with_logits(map_logits[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    combined = loss((logits, map_logits), (classes, lesion))
    assert combined == pytest.approx(float(class_loss(logits, classes) + 0.5 * expected_map))
    assert loss(logits, classes) == pytest.approx(float(class_loss(logits, classes)))  # validation: no map
    unknown_only = loss((logits[1:], map_logits[1:]), (classes[1:], lesion[1:]))
    assert unknown_only == pytest.approx(float(class_loss(logits[1:], classes[1:])))


def test_the_head_adds_grid_logits_in_training_and_nothing_in_eval() -> None:
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=4, lesion_map=True)
    x = torch.randn(2, 3, 64, 64)
    logits, map_logits = model.train()(x)
    assert logits.shape == (2, 4) and map_logits.shape == (2, 2, 2)
    model.eval()
    assert torch.equal(model(x), model.net(x))
    head = {id(p) for p in param_groups(model)["head"]}
    assert all(id(p) in head for p in model.lesion_head.parameters())


def test_a_finer_map_adds_the_skip_logits_to_the_upsampled_stride_32_ones() -> None:
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=4, lesion_map=True, lesion_map_stride=16).train()
    for head in (model.lesion_head, model.skip_head):
        torch.nn.init.normal_(head.weight, std=0.1)
    kept = []
    model.net.blocks[4].register_forward_hook(lambda module, inputs, output: kept.append(output))  # stride 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        map_logits = model.lesion_map(x)
        coarse = model.lesion_head(model.net.forward_features(x))
        expected = model.skip_head(kept[-1]) + F.interpolate(coarse, size=(4, 4), mode="bilinear")
    assert map_logits.shape == (2, 4, 4)
    assert torch.allclose(map_logits, expected.squeeze(1), atol=1e-6)
    assert model(x)[1].shape == (2, 4, 4)
    model.eval()
    assert torch.equal(model(x), model.net(x))
    head = {id(p) for p in param_groups(model)["head"]}
    assert all(id(p) in head for p in model.skip_head.parameters())


def test_a_finer_map_needs_a_trunk_that_names_its_levels() -> None:
    with pytest.raises(ValueError, match="MyConvNeXt names no stride-8 features .*can only be stride 32"):
        create_model("my_convnext", num_classes=4, lesion_map=True, lesion_map_stride=8)


DENSENET_ARGS = ["--model", "densenet121", "--model-kwargs", '{"growth_rate": 8, "block_config": [1, 1, 1, 1]}']


@pytest.mark.parametrize(("task", "model_args", "stride"), [
    ("cla", ["--model", "convnext_atto"], 32),
    ("cla", ["--model", "tf_efficientnet_lite0"], 16),
    ("fea", DENSENET_ARGS, 32),
])
def test_a_lesion_map_run_checkpoints_a_model_that_predicts_as_before(
    phantom_small: Path, tmp_path: Path, task: str, model_args: list[str], stride: int
) -> None:
    out = tmp_path / task
    run(["--data", str(phantom_small), "--out", str(out), "--epochs", "1", *model_args, "--img-size", "64",
         "--batch-size", "16", "--workers", "0", "--cutmix", "0.5", "--lesion-map", "0.5",
         "--lesion-map-stride", str(stride)], task)
    model, config = load_checkpoint(out / "best.safetensors")
    assert config.model_kwargs["lesion_map"] is True and config.model_kwargs["lesion_map_stride"] == stride
    assert "lesion_head.weight" in dict(model.named_parameters())
    assert model.lesion_map(torch.zeros(1, 3, 64, 64)).shape == (1, 64 // stride, 64 // stride)
    expected = (1, len(config.labels)) if task == "cla" else (1, len(config.labels), 2)
    assert model(torch.zeros(1, 3, 64, 64)).shape == expected


def test_a_lesion_map_cannot_go_with_mixup(phantom_small: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--lesion-map cannot go with a batch transform"):
        run(["--data", str(phantom_small), "--out", str(tmp_path / "run"), "--model", "convnext_atto",
             "--lesion-map", "1", "--mixup", "0.2"], "cla")


def test_a_map_stride_without_a_lesion_map_is_refused(phantom_small: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--lesion-map-stride .* needs --lesion-map"):
        run(["--data", str(phantom_small), "--out", str(tmp_path / "run"), "--model", "convnext_atto",
             "--lesion-map-stride", "16"], "cla")


def test_the_cache_keeps_known_maps_and_unknown_ones_stay_unknown(tmp_path: Path) -> None:
    samples = _lesion_samples(tmp_path)
    samples[1].box = samples[1].mask = None
    dataset = LesionDataset(samples, Preprocess(img_size=32, cut_black=None), CLA, lesion_maps=True)
    fresh = [dataset.load(index)[2] for index in range(2)]
    dataset.cache_images()
    cached = [dataset.load(index)[2] for index in range(2)]
    assert np.array_equal(cached[0], fresh[0]) and cached[0].sum() > 0
    assert fresh[1] is None and cached[1] is None
