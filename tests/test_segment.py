"""The lesion segmenter: it learns where a lesion is on the shared engine, its checkpoint round-trips, and it
writes box files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.data.layout import Sample
from project.data.transforms import Preprocess
from project.engine import EngineConfig, Trainer
from project.localise import box_iou, read_box_file
from project.models.checkpoint import CheckpointConfig, CheckpointError
from project.models.outline import OutlineNet
from project.segment import (
    DiceBCELoss,
    MaskDataset,
    SegmenterConfig,
    judge_outlines,
    load_segmenter,
    main,
    outline_box,
    train_segmenter,
)


def _lesion_picture(folder: Path, index: int, rng: np.random.Generator) -> tuple[Sample, tuple[float, ...]]:
    """A 96 x 80 speckle with one bright rectangle of random size and place, its mask, and its YOLO box."""
    height, width = 80, 96
    image = rng.integers(40, 110, (height, width), dtype=np.uint8)
    h, w = int(rng.integers(14, 34)), int(rng.integers(14, 40))
    top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    image[top:top + h, left:left + w] = rng.integers(190, 250, (h, w), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:top + h, left:left + w] = 255
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(folder / f"{index}.png")
    Image.fromarray(mask).save(folder / f"{index}_mask.png")
    box = ((left + w / 2) / width, (top + h / 2) / height, w / width, h / height)
    return Sample(folder / f"{index}.png", label=0, mask=folder / f"{index}_mask.png"), box


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Sample], list[tuple[float, ...]]]:
    folder = tmp_path_factory.mktemp("lesions")
    rng = np.random.default_rng(0)
    made = [_lesion_picture(folder, i, rng) for i in range(64)]
    return [sample for sample, _ in made], [box for _, box in made]


@pytest.fixture(scope="module")
def segmenter(pictures, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: the segmenter trained on 48 pictures, judged on the other 16 after each epoch."""
    samples, _ = pictures
    run = tmp_path_factory.mktemp("segmenter")
    train_segmenter(samples[:48], samples[48:], run, SegmenterConfig(img_size=64, epochs=6, batch_size=8))
    return run


def _summary(run: Path) -> list[dict[str, str]]:
    with open(run / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_segmenter_frames_lesions_it_has_not_seen(pictures, segmenter: Path) -> None:
    samples, boxes = pictures
    model, preprocess = load_segmenter(segmenter)
    assert preprocess.mean == (0.5, 0.5, 0.5) and preprocess.img_size == 64  # the Lite trunk's normalisation
    found = [outline_box(model, preprocess, np.asarray(Image.open(s.path))) for s in samples[48:]]
    ious = np.array([box_iou(a, b) for a, b in zip(found, boxes[48:], strict=True)])
    whole_frame = np.mean([box_iou((0.5, 0.5, 1.0, 1.0), b) for b in boxes[48:]])
    assert whole_frame < 0.15
    assert ious.mean() > 0.4, ious  # 0.59 here; one epoch gives 0.30


def test_the_run_folder_judges_each_epoch_on_the_held_out_masks(segmenter: Path) -> None:
    rows = _summary(segmenter)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert {"val_loss", "val_box_iou", "val_box_iou_over_half", "val_dice"} <= set(rows[0])
    assert float(rows[-1]["val_box_iou"]) > max(0.4, float(rows[0]["val_box_iou"]))
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    assert list((segmenter / "tensorboard").iterdir()) and (segmenter / "learning_curves.png").is_file()


def test_the_judge_scores_a_perfect_and_a_misplaced_outline() -> None:
    masks = torch.zeros(2, 1, 20, 20)
    masks[:, :, 4:10, 6:16] = 1
    perfect = judge_outlines((masks * 2 - 1) * 10, masks).metrics
    assert perfect["box_iou"] == pytest.approx(1.0) and perfect["dice"] == pytest.approx(1.0)
    shifted = torch.roll(masks, 10, dims=2)  # the same box 10 rows lower: no overlap
    misplaced = judge_outlines((shifted * 2 - 1) * 10, masks).metrics
    assert misplaced["box_iou"] == 0.0 and misplaced["box_iou_over_half"] == 0.0 and misplaced["dice"] == 0.0


def test_the_checkpoint_gives_the_same_boxes_and_the_command_writes_them(
    pictures, segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    samples, _ = pictures
    model, preprocess = load_segmenter(segmenter)
    folder = tmp_path / "testB"
    folder.mkdir()
    for sample in samples[48:52]:
        (folder / sample.path.name).write_bytes(sample.path.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["boxes", "--weights", str(segmenter), "--images", str(folder), "--out", str(tmp_path / "b.csv")]) == 1
    written = read_box_file(tmp_path / "b.csv")
    assert sorted(written) == sorted(s.path.name for s in samples[48:52])
    for sample in samples[48:52]:
        again = outline_box(model, preprocess, np.asarray(Image.open(sample.path)))
        assert written[sample.path.name] == pytest.approx(again, abs=1e-6)
    assert "broken.png" in capsys.readouterr().err
    assert main(["boxes", "--weights", str(segmenter), "--images", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "c.csv")]) == 2
    assert "nowhere: no such folder of images" in capsys.readouterr().err


def test_a_classifier_checkpoint_is_not_a_segmenter(tmp_path: Path) -> None:
    from project.models.checkpoint import save_checkpoint
    from project.models.factory import create_model

    save_checkpoint(tmp_path / "cls.safetensors", create_model("resnet10t", num_classes=2),
                    CheckpointConfig(task="cla", model_name="resnet10t", model_kwargs={"num_classes": 2},
                                     labels=["a", "b"], preprocess={}))
    with pytest.raises(CheckpointError, match="cls.safetensors: a cla checkpoint, not a lesion segmenter"):
        load_segmenter(tmp_path / "cls.safetensors")


def _mask_dataset(root: Path, pictures: list[Sample]) -> Path:
    """The pictures in the challenge layout, one class folder with images/ and masks/ (no folds)."""
    folder = root / "train" / "cla" / "2类"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for sample in pictures:
        (folder / "images" / sample.path.name).write_bytes(sample.path.read_bytes())
        (folder / "masks" / sample.path.name).write_bytes(sample.mask.read_bytes())
    return root


def test_the_train_command_without_a_fold_trains_on_every_mask(pictures, tmp_path: Path) -> None:
    samples, _ = pictures
    data = _mask_dataset(tmp_path / "data", samples[:16])
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--img-size", "64", "--epochs", "1",
                 "--batch-size", "8"]) == 0
    rows = _summary(run)
    assert len(rows) == 1 and not any(key.startswith("val_") for key in rows[0])  # nothing held out to judge
    assert (run / "args.yaml").is_file()
    model, preprocess = load_segmenter(run / "best.safetensors")
    assert preprocess.img_size == 64 and model.lateral[0].out_channels == 64


def test_without_validation_the_engine_refuses_to_select_the_best_epoch(pictures, tmp_path: Path) -> None:
    samples, _ = pictures
    preprocess = Preprocess(img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, cut_black=None)
    with pytest.raises(ValueError, match="select='best' needs validation data"):
        Trainer(OutlineNet(), DiceBCELoss(), judge_outlines, MaskDataset(samples[:4], preprocess, False), None,
                tmp_path, EngineConfig(epochs=1, select="best"),
                CheckpointConfig(task="outline", model_name="outline_fpn", model_kwargs={}, labels=["lesion"],
                                 preprocess={}))
