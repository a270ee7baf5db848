"""Model factory: building by name, loading initial weights, offline pretrained, param groups."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from project.models import factory
from project.models.convnext import MyConvNeXt
from project.models.factory import (
    InitWeightsError,
    PretrainedWeightsUnavailable,
    create_model,
    load_init_weights,
    param_groups,
)


def test_timm_convnext_weights_fill_the_my_convnext_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = timm.create_model("convnext_atto", pretrained=False).state_dict()  # 1000-class head
    path = tmp_path / "convnext_atto.safetensors"
    save_file(saved, path)
    model = create_model("my_convnext", backbone="convnext_atto", num_classes=4)

    report = load_init_weights(model, path)

    state = model.state_dict()
    backbone_keys = [k for k in saved if k.startswith(("stem.", "stages."))]
    assert backbone_keys and set(backbone_keys) <= set(report.loaded)
    for key in [*backbone_keys, "head.norm.weight", "head.norm.bias"]:
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)
    assert set(report.skipped) == {"head.fc.weight", "head.fc.bias"}
    assert "(1000, 320) in the file, (4, 160) here" in report.skipped["head.fc.weight"]
    assert set(report.missing) == {"head.pre_logits.fc.weight", "head.pre_logits.fc.bias", *report.skipped}
    assert "skipped 2" in report.summary()


@pytest.mark.parametrize(("nesting", "prefix"), [("state_dict", "module."), ("model", "_orig_mod.model.")])
def test_torch_checkpoint_with_nesting_and_wrapper_prefix_loads_completely(
    tmp_path: Path, nesting: str, prefix: str
) -> None:
    source = create_model("resnet10t", num_classes=3)
    path = tmp_path / "run.pth"
    torch.save({"epoch": 7, nesting: {f"{prefix}{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_model("resnet10t", num_classes=3)

    report = load_init_weights(target, path)

    assert report.skipped == {} and report.missing == []
    for key, tensor in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], tensor, rtol=0, atol=0)


def test_weights_of_the_bare_network_fill_a_model_with_a_lesion_map_head(tmp_path: Path) -> None:
    source = create_model("resnet10t", num_classes=3)
    path = tmp_path / "plain.safetensors"
    save_file(source.state_dict(), path)
    target = create_model("resnet10t", num_classes=3, lesion_map=True)

    report = load_init_weights(target, path)

    assert report.skipped == {} and report.missing == ["lesion_head.weight", "lesion_head.bias"]
    for key, tensor in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[f"net.{key}"], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.pth", "absent.pt"])
def test_an_unreadable_weights_file_is_named_in_the_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name != "absent.pt":
        path.write_bytes(b"not a weights file" * 8)
    with pytest.raises(InitWeightsError, match=f"cannot read weights from .*{name}"):
        load_init_weights(create_model("resnet10t", num_classes=2), path)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(create_model("resnet10t", num_classes=2).state_dict(), path)
    with pytest.raises(InitWeightsError, match="none of the .* tensors in .*resnet.safetensors fits"):
        load_init_weights(create_model("my_convnext", backbone="convnext_atto", num_classes=2), path)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_pretrained_without_network_fails_fast_pointing_to_init_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(factory, "_hub_unreachable_reason", lambda: "the hub is unreachable (test)")

    with pytest.raises(PretrainedWeightsUnavailable, match=r"convnext_atto.*--init-weights PATH"):
        create_model("my_convnext", pretrained=True, backbone="convnext_atto", num_classes=4)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "seresnext26d_32x4d"])
def test_baselines_build_by_name_with_k_outputs(name: str) -> None:
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_my_convnext_by_name_takes_the_builder_kwargs() -> None:
    model = create_model("my_convnext", backbone="convnext_atto", num_classes=2, p_head=0.25)
    assert isinstance(model, MyConvNeXt)
    assert model.model_kwargs["p_head"] == 0.25 and model.head.drop.p == 0.25


def test_an_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'convnext_gigantic'.*my_convnext"):
        create_model("convnext_gigantic")


def test_timm_baseline_param_groups_run_from_head_to_stem() -> None:
    model = create_model("resnet10t", num_classes=3)

    groups = param_groups(model)

    assert list(groups) == ["head", "stage3", "stage2", "stage1", "stage0", "stem"]
    assert sorted(id(p) for g in groups.values() for p in g) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in groups["head"]} == {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in groups["stage0"]} == {id(p) for p in model.layer1.parameters()}


def test_param_groups_defer_to_the_model_own() -> None:
    model = create_model("my_convnext", backbone="convnext_atto", num_classes=2)
    assert list(param_groups(model)) == list(model.param_groups())
