"""Shen et al.'s whole-image classifier: shapes, the patch conversion keeps the backbone, two-stage param groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.data import resolve_data_config

from project.models.checkpoint import CheckpointConfig, CheckpointError, load_checkpoint, save_checkpoint
from project.models.factory import create_model, param_groups
from project.models.whole_image import WholeImageClassifier, build_whole_image, from_patch_checkpoint, main

PATCH_KWARGS = {"in_chans": 1, "num_classes": 3}


@pytest.fixture(scope="module")
def patch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'trained' three-class patch classifier: random weights, BN statistics moved off their defaults."""
    torch.manual_seed(1)
    model = create_model("resnet10t", **PATCH_KWARGS)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1 + (1.0 if "running_var" in name else 0.0))
    path = tmp_path_factory.mktemp("patch") / "patch.safetensors"
    save_checkpoint(path, model, CheckpointConfig("patch", "resnet10t", PATCH_KWARGS,
                                                  ["background", "benign", "malignant"], {"size": [64, 64]}))
    return path


@pytest.mark.parametrize(("block", "channels", "grid"), [("resnet", 512, (2, 2)), ("vgg", 512, (2, 2))])
def test_shapes(block: str, channels: int, grid: tuple[int, int]) -> None:
    model = create_model("whole_image", backbone="resnet10t", block=block).eval()
    images = torch.randn(2, 1, 256, 192)  # backbone stride 32 -> 8x6, two blocks of stride 2 -> 2x2
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == (2, channels, *grid)
        assert model.forward_head(features, pre_logits=True).shape == (2, channels)
        assert model(images).shape == (2, 1)


def test_width_sets_the_top_blocks() -> None:
    model = build_whole_image("resnet10t", block="resnet", width=32, num_classes=2)
    assert model.num_features == 128 and model.head.fc.out_features == 2
    assert build_whole_image("resnet10t", block="vgg", width=48).num_features == 48


def test_conversion_keeps_the_patch_backbone(patch_checkpoint: Path, tmp_path: Path) -> None:
    patch, _ = load_checkpoint(patch_checkpoint)
    model, kwargs = from_patch_checkpoint(patch_checkpoint, block="resnet", width=32)
    assert kwargs == {"backbone": "resnet10t", "in_chans": 1, "block": "resnet", "width": 32}
    backbone = model.backbone.state_dict()
    patch_state = patch.state_dict()
    assert set(patch_state) - set(backbone) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(backbone[k], patch_state[k]) for k in backbone)
    # the same features on a patch: the bottom of the whole-image model is the patch classifier
    with torch.no_grad():
        x = torch.randn(1, 1, 64, 64)
        assert torch.allclose(model.eval().backbone.forward_features(x), patch.eval().forward_features(x))
    # the written checkpoint no longer needs the patch file
    out = tmp_path / "whole.safetensors"
    assert main(["--patch", str(patch_checkpoint), "--out", str(out), "--width", "32"]) == 0
    patch_checkpoint.rename(patch_checkpoint.with_suffix(".moved"))
    try:
        loaded, config = load_checkpoint(out)
    finally:
        patch_checkpoint.with_suffix(".moved").rename(patch_checkpoint)
    assert config.model_name == "whole_image" and config.task == "mammo" and config.labels == ["cancer"]
    assert "patch_checkpoint" not in config.model_kwargs
    assert all(torch.equal(loaded.backbone.state_dict()[k], patch_state[k]) for k in backbone)


def test_conversion_refuses_a_wrong_backbone_or_file(patch_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds a 'resnet10t'"):
        build_whole_image("resnet18", patch_checkpoint=patch_checkpoint)
    with pytest.raises(CheckpointError, match="not found"):
        build_whole_image(patch_checkpoint=tmp_path / "missing.safetensors")


def test_param_groups_put_the_new_layers_in_head() -> None:
    model = build_whole_image("resnet10t")
    groups = param_groups(model)
    assert list(groups) == ["head", "stage3", "stage2", "stage1", "stage0", "stem"]
    head = {id(p) for p in groups["head"]}
    assert head == {id(p) for p in [*model.top.parameters(), *model.head.parameters()]}
    every = [id(p) for params in groups.values() for p in params]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one group
    assert {id(p) for p in groups["stem"]} == {id(p) for p in model.backbone.conv1.parameters()} | {
        id(p) for p in model.backbone.bn1.parameters()}


def test_is_a_module_of_its_own_type() -> None:
    assert isinstance(create_model("whole_image", backbone="resnet10t"), WholeImageClassifier)
    with pytest.raises(ValueError, match="block"):
        build_whole_image("resnet10t", block="dense")
    with pytest.raises(ValueError, match="backbone name or a patch_checkpoint"):
        build_whole_image()


def test_normalisation_is_the_backbones() -> None:
    """The whole-image model is fed as its patch trunk was trained: timm's data config of the backbone."""
    lite = resolve_data_config({}, model=build_whole_image("tf_efficientnet_lite0"))
    resnet = resolve_data_config({}, model=build_whole_image("resnet10t"))
    assert (lite["mean"], lite["std"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert resnet["mean"] == (0.485, 0.456, 0.406)
