"""Both ultrasound heads on the EfficientNet-Lite trunk (shapes, regularisation, CBAM, weights); feature ablations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from project.models.densenet import TINY_DENSENET, TaskSpecificDecoupling
from project.models.factory import create_model, param_groups
from project.models.pretrained import offline_state_dict
from project.tasks import create_task
from project.training import build_parser


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    return offline_state_dict("tf_efficientnet_lite0")


@pytest.mark.parametrize(("name", "kwargs", "shape"), [
    ("my_efficientnet", {"num_classes": 6}, (2, 6)),
    ("my_efficientnet_features", {"tasks": ["boundary", "shape", "calcification"]}, (2, 3, 2)),
])
def test_both_heads_load_every_imagenet_trunk_tensor_by_name(
    imagenet: dict[str, torch.Tensor], name: str, kwargs: dict, shape: tuple[int, ...]
) -> None:
    model = create_model(name, pretrained=True, **kwargs).eval()

    state = model.state_dict()
    for key, tensor in imagenet.items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == shape


def test_the_classifier_has_block_dropout_rising_stochastic_depth_and_an_mlp_head() -> None:
    model = create_model("my_efficientnet", num_classes=4, p_block=0.1, sd_max=0.3, p_head=0.4)

    blocks = [m for stage in model.blocks for name, m in stage.named_children() if not name.endswith("_dropout")]
    dropouts = [m for stage in model.blocks for name, m in stage.named_children() if name.endswith("_dropout")]
    assert len(blocks) == len(dropouts) == 16 and all(d.p == 0.1 for d in dropouts)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in blocks]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] == pytest.approx(0.3 * 15 / 16)
    assert model.head.drop.p == 0.4 and model.head.pre_logits.fc.out_features == 640


def test_the_feature_recogniser_has_one_cbam_per_resolution_level() -> None:
    model = create_model("my_efficientnet_features", tasks=["boundary"])
    assert list(model.after_stage) == ["0", "1", "2", "4", "6"]
    hidden = [m.channel.fc1.out_channels for m in model.cbam_modules()]
    assert hidden == [16 // 8, 24 // 16, 40 // 24, 112 // 32, 320 // 40]


def test_residual_cbam_leaves_the_pretrained_trunk_unchanged_until_it_learns() -> None:
    bare = create_model("my_efficientnet_features", tasks=["boundary"], cbam="none", pretrained=True).eval()
    model = create_model("my_efficientnet_features", tasks=["boundary"], cbam="residual", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), bare.forward_features(x), rtol=0, atol=0)
        plain = create_model("my_efficientnet_features", tasks=["boundary"], cbam="plain", pretrained=True).eval()
        assert not torch.allclose(plain.forward_features(x), bare.forward_features(x), atol=1e-3)

    model.train()
    model(x).sum().backward()
    assert all(cbam.gamma.grad.abs().sum() > 0 for cbam in model.cbam_modules())


@pytest.mark.parametrize(("name", "kwargs"), [
    ("my_efficientnet_features", {}),
    ("my_densenet", {"backbone": "densenet121", **TINY_DENSENET}),
])
def test_the_ablations_drop_cbam_and_the_decoupling_and_rebuild_from_their_kwargs(name: str, kwargs: dict) -> None:
    tasks = ["boundary", "shape", "calcification"]
    full = create_model(name, tasks=tasks, **kwargs)
    plain = create_model(name, tasks=tasks, cbam="none", decouple_dim=0, **kwargs).eval()

    assert len(full.cbam_modules()) > 0 and plain.cbam_modules() == []
    assert not any(isinstance(m, TaskSpecificDecoupling) for m in plain.modules())
    assert plain.decoupling.fc.out_features == 2 * len(tasks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = plain(x)
    assert logits.shape == (2, 3, 2)
    rebuilt = create_model(name, **plain.model_kwargs).eval()
    rebuilt.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), logits)
    with pytest.raises(ValueError, match="decouple_dim"):
        create_model(name, tasks=tasks, decouple_dim=-1, **kwargs)


@pytest.mark.parametrize("name", ["my_efficientnet", "my_efficientnet_features"])
def test_param_groups_cover_every_parameter_once_from_head_to_stem(name: str) -> None:
    model = create_model(name)
    groups = param_groups(model)
    assert list(groups) == ["head", *(f"stage{i}" for i in reversed(range(7))), "stem"]
    ids = [id(p) for group in groups.values() for p in group]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in model.conv_stem.parameters()} <= set(map(id, groups["stem"]))
    head_modules: list[nn.Module] = [model.conv_head, model.bn2]
    assert {id(p) for m in head_modules for p in m.parameters()} <= set(map(id, groups["head"]))


@pytest.mark.parametrize(("task", "argv", "name", "expected"), [
    ("cla", ["--model", "my_efficientnet", "--p-block", "0.1", "--sd-max", "0.2"], "my_efficientnet",
     {"num_classes": 6, "p_block": 0.1, "sd_max": 0.2, "p_head": 0.5}),
    ("cla", ["--model", "tf_efficientnet_lite0"], "tf_efficientnet_lite0", {"num_classes": 6}),
    ("fea", ["--model", "tf_efficientnet_lite1", "--p-head", "0.3"], "my_efficientnet_features",
     {"backbone": "tf_efficientnet_lite1", "tasks": ["boundary", "shape"], "p_head": 0.3, "cbam": "residual"}),
])
def test_the_tasks_route_efficientnet_names(task: str, argv: list[str], name: str, expected: dict) -> None:
    args = build_parser(task).parse_args(["--data", "d", "--out", "o", *argv])
    labels = ["2", "3", "4A", "4B", "4C", "5"] if task == "cla" else ["boundary", "shape"]
    assert create_task(task, labels).model_spec(args) == (name, expected)
