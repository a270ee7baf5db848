"""Tasks by name: a task is one class; a toy third task trains through the real trainer and predicts through predict."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from project.data.classes import BIRADS_CLASSES, FEATURE_TASKS
from project.data.layout import Sample, Scan, list_images, load_split
from project.fileio import atomic_write_csv, numeric_order_key
from project.models.checkpoint import read_config
from project.predict import load_members, predict_folder, write_predictions
from project.runfolder import read_validation_split, write_validation_split
from project.tasks import TASKS, Evaluation, Task, UnknownTask, create_task, register_task, task_class
from project.training import run

SUSPICIOUS_FROM = BIRADS_CLASSES.index("4A")


class SuspiciousTask(Task):
    """Benign (BI-RADS 2, 3) against suspicious (4A and above) from one logit; suspicious_pre.csv."""

    name = "toy_suspicious"
    title = "toy suspicious-lesion detector"
    default_model = "resnet10t"
    default_lr = 2e-3
    evaluated: ClassVar[list[tuple[list[float], list[float]]]] = []  # (targets, the samples' labels) per evaluation

    @classmethod
    def load(cls, root: Path, split: str = "train") -> tuple[Scan, list[str]]:
        scan, _ = load_split(root, split, "cla")
        samples = [replace(s, label=int(s.label >= SUSPICIOUS_FROM)) for s in scan.samples]
        return Scan(samples, scan.problems), ["suspicious"]

    def label_columns(self, sample: Sample) -> dict[str, str]:
        return {"suspicious": str(sample.label)}

    def truth_from_columns(self, row: Mapping[str, str]) -> dict:
        return {"label": int(row["suspicious"])}

    def model_spec(self, args: argparse.Namespace) -> tuple[str, dict]:
        return args.model, {"num_classes": 1, **args.model_kwargs}

    def loss(self, args: argparse.Namespace, train: Sequence[Sample]) -> nn.Module:
        return BinaryLoss()

    def target(self, sample: Sample) -> torch.Tensor:
        return torch.tensor(float(sample.label))

    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
        return (1 - share) * target + share * other

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, samples: Sequence[Sample]) -> Evaluation:
        type(self).evaluated.append((targets.tolist(), [float(s.label) for s in samples]))
        probs = self.probabilities(logits)[:, 0].numpy()
        threshold = float(np.median(probs))
        accuracy = float(np.mean((probs >= threshold) == (targets.numpy() >= 0.5)))
        return Evaluation(metrics={"score": accuracy, "accuracy": accuracy}, thresholds={"suspicious": threshold})

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def decide(self, probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
        return (probs[:, 0] >= thresholds.get("suspicious", 0.5)).astype(int)

    def write_submission(
        self, out_dir: Path, names: Sequence[str], probs: np.ndarray, thresholds: Mapping[str, float], id_style: str
    ) -> Path:
        path = Path(out_dir) / "suspicious_pre.csv"
        decided = dict(zip(names, self.decide(probs, thresholds).tolist()))
        rows = [(name, decided[name]) for name in sorted(names, key=numeric_order_key)]
        atomic_write_csv(path, ["img_name", "suspicious"], rows)
        return path


class BinaryLoss(nn.Module):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float())


@pytest.fixture
def toy_task() -> Iterator[type[Task]]:
    register_task(SuspiciousTask)
    SuspiciousTask.evaluated.clear()
    yield SuspiciousTask
    del TASKS[SuspiciousTask.name]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_registered_task_trains_and_predicts_with_no_library_change(
    toy_task: type[Task], phantom_small: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run(["--data", str(phantom_small), "--out", str(out), "--img-size", "32", "--epochs", "2", "--batch-size", "16",
         "--workers", "0"], toy_task.name)
    config = read_config(out / "best.safetensors")
    assert (config.task, config.model_name, config.labels) == ("toy_suspicious", "resnet10t", ["suspicious"])
    assert set(config.thresholds) == {"suspicious"} and len(_rows(out / "summary.csv")) == 2
    # The engine judged each epoch with the validation samples in the order of its logits.
    assert len(toy_task.evaluated) == 2
    assert all(targets == labels for targets, labels in toy_task.evaluated)

    members = load_members([out / "best.safetensors"], torch.device("cpu"))
    val = read_validation_split(out / "val.csv", members[0].task, phantom_small)
    assert [s.label for s in val] == toy_task.evaluated[0][1]
    assert {s.label for s in val} == {0, 1} and all(s.path.is_file() for s in val)

    paths = list_images(phantom_small / "testB" / "cla")
    predictions = predict_folder(paths, members, torch.device("cpu"), workers=0)
    written = write_predictions(tmp_path, predictions, members, "name")
    assert written == tmp_path / "suspicious_pre.csv"
    expected = (predictions.probs[:, 0] >= config.thresholds["suspicious"]).astype(int)
    rows = _rows(written)
    assert [r["img_name"] for r in rows] == [p.name for p in paths]
    assert [int(r["suspicious"]) for r in rows] == expected.tolist()


def test_the_registry_names_every_task_once(toy_task: type[Task]) -> None:
    assert {"cla", "fea", "toy_suspicious"} <= set(TASKS)
    assert task_class("fea") is TASKS["fea"] and create_task("cla", ["2", "3"]).labels == ["2", "3"]
    with pytest.raises(UnknownTask, match="unknown task 'detection'; registered: cla, fea, mammo"):
        task_class("detection")

    class Impostor(SuspiciousTask):
        pass

    with pytest.raises(ValueError, match="already registered by SuspiciousTask"):
        register_task(Impostor)


@pytest.mark.parametrize(("name", "labels"), [("cla", BIRADS_CLASSES), ("fea", FEATURE_TASKS)])
def test_val_csv_round_trips_the_truth_groups_folds_and_metadata(name: str, labels: Sequence[str], tmp_path: Path
                                                                 ) -> None:
    root = tmp_path / "data"
    samples = [
        Sample(root / "train" / "a" / "1.png", label=3, features=dict(zip(FEATURE_TASKS, (1, None, 0, 1))),
               group="p1", fold=2, extra={"pathology": "malignant"}),
        Sample(root / "train" / "b" / "2.png", label=0, features=dict(zip(FEATURE_TASKS, (0, 0, None, None))),
               extra={"pathology": ""}),
    ]
    task = create_task(name, labels)
    write_validation_split(tmp_path / "val.csv", samples, task, root)
    header = next(csv.reader((tmp_path / "val.csv").open()))
    assert header[0] == "file" and header[-3:] == ["group", "fold", "pathology"]
    assert _rows(tmp_path / "val.csv")[0]["file"] == "train/a/1.png"
    moved = tmp_path / "elsewhere"
    read = read_validation_split(tmp_path / "val.csv", task, moved)
    assert [s.path for s in read] == [moved / "train" / "a" / "1.png", moved / "train" / "b" / "2.png"]
    assert [(s.group, s.fold, s.extra) for s in read] == [(s.group, s.fold, s.extra) for s in samples]
    np.testing.assert_array_equal([task.target(s).numpy() for s in read], [task.target(s).numpy() for s in samples])
