"""MyConvNeXt: stochastic-depth schedule, dropout placement, head layout, shapes, param groups."""

from __future__ import annotations

import json

import pytest
import torch
from timm.layers import DropPath
from timm.layers.activations import GELU as TimmGELU
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from project.models.convnext import MyConvNeXt, build_my_convnext

ATTO_DEPTHS = (2, 2, 6, 2)
ATTO_CHANNELS = 320


@pytest.fixture(scope="module")
def atto() -> MyConvNeXt:
    torch.manual_seed(0)
    return build_my_convnext("convnext_atto", num_classes=5, p_block=0.07, sd_max=0.6, p_head=0.3)


def drop_path_rates(model: nn.Module) -> list[float]:
    """Each ConvNeXt block's stochastic-depth rate in forward order (0 where timm put Identity)."""
    rates = []
    for block in (m for m in model.modules() if isinstance(m, ConvNeXtBlock)):
        if isinstance(block.drop_path, nn.Identity):
            rates.append(0.0)
        else:
            assert type(block.drop_path) is DropPath
            rates.append(block.drop_path.drop_prob)
    return rates


@pytest.mark.parametrize("backbone", ["convnext_atto", "convnextv2_atto"])
@pytest.mark.parametrize("sd_max", [0.6, 0.3])
def test_drop_path_rises_linearly_from_zero_to_sd_max(backbone: str, sd_max: float) -> None:
    rates = drop_path_rates(build_my_convnext(backbone, num_classes=3, sd_max=sd_max))

    assert len(rates) == sum(ATTO_DEPTHS)
    assert rates[0] == 0.0
    # timm computes the rates in float32, hence the tolerance.
    assert rates[-1] == pytest.approx(sd_max, abs=1e-6)
    step = sd_max / (len(rates) - 1)
    assert [b - a for a, b in zip(rates, rates[1:])] == pytest.approx([step] * (len(rates) - 1), abs=1e-6)


def test_every_block_is_followed_by_dropout(atto: MyConvNeXt) -> None:
    for stage, depth in zip(atto.stages, ATTO_DEPTHS):
        layers = list(stage.blocks)
        assert len(layers) == 2 * depth
        assert all(isinstance(block, ConvNeXtBlock) for block in layers[0::2])
        assert all(type(drop) is nn.Dropout and drop.p == 0.07 for drop in layers[1::2])
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.07 for m in atto.modules()) == sum(ATTO_DEPTHS)


def test_head_runs_layernorm_linear_gelu_dropout_linear(atto: MyConvNeXt) -> None:
    called: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda module, _in, _out: called.append(module))
        for m in atto.head.modules()
        if isinstance(m, (nn.LayerNorm, nn.Linear, nn.GELU, TimmGELU, nn.Dropout))
    ]
    atto.eval()
    with torch.no_grad():
        atto(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()

    norm, hidden, act, drop, out = called
    assert isinstance(norm, nn.LayerNorm) and norm.normalized_shape == (ATTO_CHANNELS,)
    assert isinstance(hidden, nn.Linear) and (hidden.in_features, hidden.out_features) == (320, 160)
    assert isinstance(act, (nn.GELU, TimmGELU))
    assert type(drop) is nn.Dropout and drop.p == 0.3
    assert isinstance(out, nn.Linear) and (out.in_features, out.out_features) == (160, 5)


def test_logits_have_shape_batch_by_classes_also_channels_last(atto: MyConvNeXt) -> None:
    images = torch.randn(2, 3, 64, 64)
    atto.eval()
    with torch.no_grad():
        logits = atto(images)
        features = atto.forward_features(images)
        hidden = atto.forward_head(features, pre_logits=True)
        atto.to(memory_format=torch.channels_last)
        logits_cl = atto(images.to(memory_format=torch.channels_last))
        atto.to(memory_format=torch.contiguous_format)

    assert logits.shape == (2, 5)
    assert features.shape == (2, ATTO_CHANNELS, 2, 2)
    assert hidden.shape == (2, ATTO_CHANNELS // 2)
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-5)


def test_dropout_is_active_in_training_only(atto: MyConvNeXt) -> None:
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        atto.train()
        first, second = atto(images), atto(images)
        atto.eval()
        torch.testing.assert_close(atto(images), atto(images))
    assert not torch.allclose(first, second)


def test_convnext_v2_builds_and_predicts() -> None:
    model = build_my_convnext("convnextv2_atto", num_classes=4).eval()
    assert any("grn" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert model(torch.randn(3, 3, 64, 64)).shape == (3, 4)


def test_param_groups_split_every_parameter_once_top_first(atto: MyConvNeXt) -> None:
    groups = atto.param_groups()

    assert list(groups) == ["head", "stage3", "stage2", "stage1", "stage0", "stem"]
    grouped = [id(p) for params in groups.values() for p in params]
    assert sorted(grouped) == sorted(id(p) for p in atto.parameters())
    assert {id(p) for p in groups["head"]} == {id(p) for p in atto.head.parameters()}
    assert {id(p) for p in groups["stem"]} == {id(p) for p in atto.stem.parameters()}


def test_model_kwargs_are_json_and_rebuild_the_same_architecture(atto: MyConvNeXt) -> None:
    kwargs = json.loads(json.dumps(atto.model_kwargs))
    rebuilt = build_my_convnext(**kwargs)

    assert kwargs["sd_max"] == 0.6 and kwargs["p_block"] == 0.07
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in atto.state_dict().items()}
    assert drop_path_rates(rebuilt) == drop_path_rates(atto)


def test_a_backbone_that_is_not_convnext_is_refused() -> None:
    with pytest.raises(ValueError, match="resnet10t.*not a timm ConvNeXt"):
        build_my_convnext("resnet10t")
