"""An auxiliary head learnt from a metadata column beside the BI-RADS classes: targets, loss, metrics, a run."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import trainer_args, write_cla_dataset

from project.data.layout import Sample
from project.losses import AuxiliaryHeadLoss, ClassificationLoss
from project.models.checkpoint import load_checkpoint, save_checkpoint
from project.predict import load_members, predict_folder, write_probabilities
from project.tasks import create_task
from project.training import run

CLASSES = ["2", "3", "4"]


def _args(**overrides) -> argparse.Namespace:
    return trainer_args(**{"aux_column": "pathology", "aux_weight": 0.5, "label_smoothing": 0.0, **overrides})


def _samples() -> list[Sample]:
    return [Sample(Path(f"{i}.png"), label=i % 3, extra={"pathology": p})
            for i, p in enumerate(["benign", "benign", "malignant", ""])]


def test_targets_carry_the_class_and_the_auxiliary_index_or_minus_one() -> None:
    task = create_task("cla", CLASSES)
    samples = _samples()
    task.configure(_args(), samples)
    assert task.aux.classes == ("benign", "malignant")
    spec = _args(model="resnet10t", model_kwargs={}, p_block=0.0, sd_max=0.0, p_head=0.0)
    assert task.model_spec(spec)[1]["num_classes"] == 5
    assert [task.target(s).tolist() for s in samples] == [[0, 0], [1, 0], [2, 1], [0, -1]]


def test_the_loss_adds_the_heads_cross_entropy_where_its_class_is_known() -> None:
    task = create_task("cla", CLASSES)
    task.configure(_args(), _samples())
    loss = task.loss(_args(), _samples())
    assert isinstance(loss, AuxiliaryHeadLoss)
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 3.0, 0.0]])
    targets = torch.tensor([[0, 1], [1, -1]])
    classes = ClassificationLoss(label_smoothing=0.0)(logits[:, :3], targets[:, 0])
    aux = F.cross_entropy(logits[:1, 3:], torch.tensor([1]))
    assert float(loss(logits, targets)) == pytest.approx(float(classes + 0.5 * aux), rel=1e-6)


def test_evaluation_and_prediction_read_the_classes_and_score_the_head_beside() -> None:
    task = create_task("cla", CLASSES)
    task.configure(_args(), _samples())
    logits = torch.tensor([[5.0, 0, 0, 2.0, 0], [0, 5.0, 0, 0, 1.0], [0, 5.0, 0, 0, 2.0], [0, 0, 5.0, 3.0, 0]])
    targets = torch.tensor([[0, 0], [1, 1], [2, 0], [2, -1]])
    metrics = task.evaluate(logits, targets, []).metrics
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["aux_accuracy"] == pytest.approx(2 / 3)  # the unknown row is left out
    assert metrics["aux_auc"] == pytest.approx(0.5)  # the malignant 0.73 beats one of the two benign
    assert task.probabilities(logits).shape == (4, 3)
    assert torch.allclose(task.probabilities(logits), torch.softmax(logits[:, :3], dim=1))


def test_a_missing_column_or_a_mix_with_mixup_or_coarse_labels_is_refused() -> None:
    task = create_task("cla", CLASSES)
    with pytest.raises(SystemExit, match="'histology' is not a metadata column"):
        task.configure(_args(aux_column="histology"), _samples())
    with pytest.raises(SystemExit, match="fewer than two values"):
        task.configure(_args(), [Sample(Path("a.png"), label=0, extra={"pathology": "benign"})])
    with pytest.raises(SystemExit, match="without --mixup"):
        task.configure(_args(mixup=0.2), _samples())
    coarse = Sample(Path("c.png"), label=None, allowed=(1, 2), extra={"pathology": "malignant"})
    with pytest.raises(SystemExit, match="with fine labels"):
        task.configure(_args(), [*_samples(), coarse])


def test_a_run_with_a_pathology_head_checkpoints_a_model_that_predicts_the_classes_and_the_head(
    tmp_path: Path,
) -> None:
    pathology = {"pathology": lambda name: "malignant" if name == "4" else "benign"}
    data = write_cla_dataset(tmp_path / "data", CLASSES, per_class=4, columns=pathology)
    out = tmp_path / "run"
    run(["--data", str(data), "--out", str(out), "--model", "resnet10t", "--img-size", "32", "--epochs", "1",
         "--batch-size", "4", "--folds", "2", "--fold", "0", "--workers", "0", "--aux-column", "pathology"], "cla")
    with (out / "summary.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert 0 <= float(row["val_aux_accuracy"]) <= 1 and 0 <= float(row["val_aux_auc"]) <= 1
    model, config = load_checkpoint(out / "best.safetensors")
    assert config.auxiliary == {"column": "pathology", "classes": ["benign", "malignant"]}
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)

    images = sorted((data / "train" / "cla").glob("*/images/*.png"))[:3]
    members = load_members([out / "best.safetensors"] * 2, torch.device("cpu"))
    predictions = predict_folder(images, members, torch.device("cpu"), batch_size=2, workers=0, tta=True)
    assert predictions.probs.shape == (3, 3) and predictions.aux.shape == (3, 2)
    assert predictions.aux.sum(axis=1) == pytest.approx([1.0] * 3, abs=1e-5)
    with (write_probabilities(tmp_path, predictions, members, "name")).open() as handle:
        header = next(csv.reader(handle))
    assert header == ["img_name", *CLASSES, "malignancy", "pathology_benign", "pathology_malignant"]

    other = tmp_path / "other.safetensors"
    config.auxiliary = {"column": "histology", "classes": ["a", "b"]}
    save_checkpoint(other, model, config)
    with pytest.raises(ValueError, match="auxiliary heads differ"):
        load_members([out / "best.safetensors", other], torch.device("cpu"))
