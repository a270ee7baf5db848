"""The two-view classifier: the lesion crop and its whole image in six channels, one trunk for both, train to run.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.data.transforms import Preprocess, Preprocessor, to_tensor
from project.localise import write_box_file
from project.models.checkpoint import load_checkpoint
from project.models.factory import create_model
from project.report import build_report
from project.testb import main as run_py
from project.training import run as train


def _bordered_picture(path: Path) -> None:
    """A 120 x 100 grey picture on a black left border (CutBlack's work) with a bright lesion."""
    image = np.zeros((100, 120, 3), np.uint8)
    image[:, 20:] = np.random.default_rng(0).integers(60, 120, (100, 100, 3), dtype=np.uint8)
    image[30:50, 50:80] = 250
    Image.fromarray(image).save(path)


def test_the_whole_image_follows_the_crop_in_channels_three_to_five(tmp_path: Path) -> None:
    _bordered_picture(tmp_path / "a.png")
    box = (65 / 120, 40 / 100, 30 / 120, 20 / 100)
    both, xyxy = Preprocessor(Preprocess(img_size=32, lesion_crop=2.0, whole_view=True))(tmp_path / "a.png", box)
    crop, crop_xyxy = Preprocessor(Preprocess(img_size=32, lesion_crop=2.0))(tmp_path / "a.png", box)
    whole, _ = Preprocessor(Preprocess(img_size=32))(tmp_path / "a.png")
    assert both.shape == (32, 32, 6) and both.dtype == np.uint8
    assert np.array_equal(both[..., :3], crop) and np.array_equal(both[..., 3:], whole)
    assert xyxy == crop_xyxy
    assert not np.array_equal(crop, whole)


def test_the_whole_view_needs_a_crop_and_travels_in_the_checkpoint_record() -> None:
    with pytest.raises(ValueError, match="whole_view needs lesion_crop"):
        Preprocessor(Preprocess(whole_view=True))
    record = Preprocess(lesion_crop=2.0, whole_view=True).to_dict()
    assert Preprocess.from_dict(record).whole_view and Preprocess.from_dict(record).channels == 6
    del record["whole_view"]  # checkpoints written before the option
    assert not Preprocess.from_dict(record).whole_view and Preprocess.from_dict(record).channels == 3


def test_each_view_is_normalised_as_a_picture_of_its_own() -> None:
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 6), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor = to_tensor(image, mean, std)
    assert tensor.shape == (6, 8, 8)
    assert torch.allclose(tensor[:3], to_tensor(np.ascontiguousarray(image[..., :3]), mean, std))
    assert torch.allclose(tensor[3:], to_tensor(np.ascontiguousarray(image[..., 3:]), mean, std))


def test_one_pretrained_trunk_reads_both_views_and_the_head_sees_them_in_order() -> None:
    model = create_model("two_view", pretrained=True, backbone="tf_efficientnet_lite0", num_classes=4).eval()
    plain = create_model("tf_efficientnet_lite0", pretrained=True, num_classes=4)
    assert torch.equal(model.net.conv_stem.weight, plain.conv_stem.weight)
    assert torch.equal(model.net.conv_head.weight, plain.conv_head.weight)
    x = torch.randn(2, 6, 64, 64)
    channels = model.net.num_features
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2 * channels)
        assert torch.allclose(features[:, :channels], model.net(x[:, :3]), atol=1e-5)
        assert torch.allclose(features[:, channels:], model.net(x[:, 3:]), atol=1e-5)
        logits = model(x)
        swapped = model(torch.cat([x[:, 3:], x[:, :3]], dim=1))
    assert logits.shape == (2, 4) and logits.abs().max() < 1.0  # a new head starts near zero
    assert not torch.allclose(logits, swapped)
    with pytest.raises(ValueError, match="takes 6 channels"):
        model(x[:, :3])
    groups = model.param_groups()  # layer-wise lr decay and staged unfreezing see every parameter once
    assert sorted(id(p) for group in groups.values() for p in group) == sorted(id(p) for p in model.parameters())
    assert list(groups)[0] == "head" and any(p is model.head.weight for p in groups["head"])


@pytest.fixture(scope="module")
def two_view_run(phantom_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two_view") / "fold0"
    train(["--data", str(phantom_small), "--out", str(out), "--model", "two_view", "--model-kwargs",
           json.dumps({"backbone": "convnext_atto"}), "--img-size", "64", "--epochs", "1", "--batch-size", "16",
           "--workers", "0", "--folds", "2", "--fold", "0", "--lesion-crop", "2", "--lesion-crop-jitter", "0.3",
           "--whole-view", "--cutmix", "0"], "cla")
    return out


def test_a_two_view_run_records_both_views_and_run_py_predicts_from_boxes(
    two_view_run: Path, phantom_small: Path, tmp_path: Path
) -> None:
    _, config = load_checkpoint(two_view_run / "best.safetensors")
    assert config.model_name == "two_view" and config.preprocess["whole_view"] and config.preprocess["lesion_crop"] == 2
    shutil.copytree(phantom_small / "testB" / "cla", tmp_path / "testB" / "cla")
    images = sorted(path.name for path in (tmp_path / "testB" / "cla").iterdir())
    write_box_file(tmp_path / "boxes.csv", {image: (0.5, 0.5, 0.3, 0.3) for image in images})
    (tmp_path / "out").mkdir()
    assert run_py(["--data", str(tmp_path / "testB"), "--cls-weights", str(two_view_run / "best.safetensors"),
                   "--boxes", str(tmp_path / "boxes.csv"), "--workers", "0", "--out-dir", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "cla_pre.csv").read_text().splitlines()
    assert rows[0] == "img_name,label" and sorted(row.split(",")[0] for row in rows[1:]) == images


def test_the_report_scores_a_two_view_run_and_says_why_it_draws_no_grad_cam(
    two_view_run: Path, tmp_path: Path
) -> None:
    metrics = build_report(two_view_run, tmp_path / "report", label_boxes=True, cam_cases=2)
    assert metrics["cla"]["n"] > 0 and "not_drawn" in metrics["gradcam"]
    assert not list((tmp_path / "report").glob("gradcam_*.png"))
    assert "No Grad-CAM: Grad-CAM reads one image" in (tmp_path / "report" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "two_view", "--lesion-crop", "2", "--cutmix", "0"], "takes 2 view"),
    (["--model", "convnext_atto", "--lesion-crop", "2", "--whole-view", "--cutmix", "0"], "takes 1 view"),
    (["--model", "two_view", "--lesion-crop", "2", "--whole-view"], "without --cutmix and --lesion-map"),
    (["--model", "two_view", "--whole-view", "--cutmix", "0"], "--whole-view needs --lesion-crop"),
])
def test_views_and_model_must_agree(phantom_small: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        train(["--data", str(phantom_small), "--out", str(tmp_path / "run"), "--img-size", "64", "--epochs", "1",
               "--workers", "0", *extra], "cla")
