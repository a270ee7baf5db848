"""MyDenseNet: CBAM placement and widths, dense-layer dropout, head shapes, rebuild from kwargs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.models.densenet import DenseBlock, DenseLayer
from torch import nn

from project.data.classes import FEATURE_TASKS
from project.models.densenet import TINY_DENSENET, block_cbam, build_my_densenet, dense_block_channels


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_my_densenet(**TINY_DENSENET)


def test_cbam_hidden_width_follows_reduction_ratio_per_block_in_densenet121() -> None:
    model = build_my_densenet("densenet121")
    cbams = model.cbam_modules()
    # Block outputs 256, 512, 1024, 1024 channels; ratios 16*(i+1)//2 = 8, 16, 24, 32.
    assert [cbam.channel.fc1.in_channels for cbam in cbams] == [256, 512, 1024, 1024]
    assert [cbam.channel.fc1.out_channels for cbam in cbams] == [32, 32, 42, 32]
    assert [cbam.channel.fc2.out_channels for cbam in cbams] == [256, 512, 1024, 1024]
    assert model.head.norm.normalized_shape == (1024,)
    assert model.head.fc1.in_features == 1024


def test_cbam_follows_each_dense_block(tiny_model: nn.Module) -> None:
    names = [name for name, _ in tiny_model.features.named_children()]
    for index in range(1, 5):
        assert names[names.index(f"denseblock{index}") + 1] == f"cbam{index}"
    blocks = [m for m in tiny_model.features if isinstance(m, DenseBlock)]
    widths = [dense_block_channels(block) for block in blocks]
    expected = [max(1, c // r) for c, r in zip(widths, (8, 16, 24, 32), strict=True)]
    assert [cbam.channel.fc1.out_channels for cbam in tiny_model.cbam_modules()] == expected


def test_cbam_preserves_feature_shapes_and_attention_maps_lie_in_unit_interval(
    tiny_model: nn.Module,
) -> None:
    shapes: list[tuple[torch.Size, torch.Size]] = []
    for cbam in tiny_model.cbam_modules():
        cbam.register_forward_hook(lambda _m, inputs, out: shapes.append((inputs[0].shape, out.shape)))
    x = torch.randn(2, 3, 64, 64)
    maps = tiny_model.attention_maps(x)
    assert len(shapes) == 4 and all(before == after for before, after in shapes)
    assert [m.shape for m in maps] == [(2, 1, s[2], s[3]) for s, _ in shapes]
    assert [s[2] for s, _ in shapes] == [16, 8, 4, 2]
    for attention in maps:
        assert attention.min() >= 0 and attention.max() <= 1
        assert attention.std() > 0


def test_one_dropout_after_each_dense_layer(tiny_model: nn.Module) -> None:
    dense_layers = [m for m in tiny_model.modules() if isinstance(m, DenseLayer)]
    assert len(dense_layers) == sum(TINY_DENSENET["block_config"])
    assert all(isinstance(layer.dropout, nn.Dropout) for layer in dense_layers)
    assert all(layer.dropout.p == 0.03 for layer in dense_layers)


def test_dense_layer_dropout_acts_on_each_layers_new_maps_only_in_training() -> None:
    model = build_my_densenet(p_layer=1.0, **TINY_DENSENET)
    block = model.features.denseblock2
    outputs: list[torch.Tensor] = []
    block.register_forward_hook(lambda _m, _inputs, out: outputs.append(out))
    in_channels = block.denselayer1.norm1.num_features
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x)
    assert outputs[-1][:, in_channels:].abs().max() == 0
    assert outputs[-1][:, :in_channels].abs().max() > 0
    model.eval()
    model(x)
    assert outputs[-1][:, in_channels:].abs().max() > 0


def test_output_shapes_follow_the_tasks_and_gradients_flow() -> None:
    model = build_my_densenet(tasks=["boundary", "shape", "margin"], **TINY_DENSENET)
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 2, 2)
    assert model.forward_head(features, pre_logits=True).shape == (2, 256)
    logits = model(x)
    assert logits.shape == (2, 3, 2)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.features.conv0.weight.grad.abs().sum() > 0


def test_default_tasks_give_four_logit_pairs(tiny_model: nn.Module) -> None:
    assert tiny_model.tasks == FEATURE_TASKS
    assert tiny_model(torch.randn(2, 3, 64, 64)).shape == (2, len(FEATURE_TASKS), 2)


def test_channels_last_gives_the_same_logits(tiny_model: nn.Module) -> None:
    tiny_model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tiny_model(x)
        tiny_model.to(memory_format=torch.channels_last)
        actual = tiny_model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_rebuilds_from_json_kwargs(tiny_model: nn.Module) -> None:
    kwargs = json.loads(json.dumps(tiny_model.model_kwargs))
    rebuilt = build_my_densenet(**kwargs)
    rebuilt.load_state_dict(tiny_model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    tiny_model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), tiny_model(x))


def test_timm_densenet_weights_load_by_name(tiny_model: nn.Module) -> None:
    timm_state = timm.create_model("densenet121", **TINY_DENSENET).state_dict()
    result = tiny_model.load_state_dict(timm_state, strict=False)
    assert set(result.unexpected_keys) == {"classifier.weight", "classifier.bias"}
    assert all(not key.startswith("features.") or ".cbam" in key for key in result.missing_keys)
    torch.testing.assert_close(
        tiny_model.features.denseblock3.denselayer2.conv2.weight,
        timm_state["features.denseblock3.denselayer2.conv2.weight"],
    )


def test_rejects_non_densenet_backbones_and_non_json_kwargs() -> None:
    with pytest.raises(ValueError, match="not a timm DenseNet"):
        build_my_densenet("resnet18")
    with pytest.raises(ValueError, match="JSON"):
        build_my_densenet(aa_layer=nn.Identity, **TINY_DENSENET)


def test_residual_cbam_is_the_identity_at_zero_and_plain_cbam_at_one() -> None:
    residual = block_cbam(16, 0, "residual")
    plain = block_cbam(16, 0, "plain")
    plain.load_state_dict({k: v for k, v in residual.state_dict().items() if k != "gamma"})
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), x, rtol=0, atol=0)
        residual.gamma.fill_(1.0)
        torch.testing.assert_close(residual(x), plain(x))
    with pytest.raises(ValueError, match="CBAM kind"):
        block_cbam(16, 0, "none")
