"""Training across label granularities: merging a coarse dataset in, partial-label targets, loss, sampler, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import trainer_args, write_cla_dataset

from project.adapters.merge import main as merge_main
from project.data.layout import Sample, load_split
from project.losses import ClassificationLoss, PartialLabelLoss, ordinal_soft_labels
from project.tasks import create_task
from project.training import run

FINE = ["2", "4A", "4B"]


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    primary = write_cla_dataset(tmp_path / "fine", FINE, per_class=4, seed=0)
    extra = write_cla_dataset(tmp_path / "coarse", ["2", "4"], per_class=6, seed=100, folds=False)
    out = tmp_path / "merged"
    assert merge_main(["--primary", str(primary), "--extra", str(extra), "--out", str(out)]) == 0
    return out


def test_merging_declares_the_coarse_label_and_keeps_the_primary_folds(merged: Path) -> None:
    config = yaml.safe_load((merged / "dataset.yaml").read_text())
    assert config["classes"] == FINE and config["coarse_labels"] == {"4": ["4A", "4B"]}
    assert (merged / "train" / "cla" / "2类" / "labels" / "coarse_2_0.txt").read_text().startswith("1 ")

    scan, _ = load_split(merged)
    coarse = [s for s in scan.samples if s.label is None]
    assert len(coarse) == 6 and all(s.allowed == (1, 2) for s in coarse)
    assert all(s.fold is None and s.group.startswith("coarse:") for s in scan.samples if "coarse" in s.path.name)
    assert {s.fold for s in scan.samples if "fine" in s.path.name} == {1, 2}
    assert not scan.problems


def test_a_finer_extra_class_joins_the_primarys_class_of_its_category(tmp_path: Path) -> None:
    primary = write_cla_dataset(tmp_path / "coarse", ["2", "4"], per_class=4, seed=0)
    extra = write_cla_dataset(tmp_path / "fine", FINE, per_class=3, seed=100, folds=False)
    out = tmp_path / "merged"
    assert merge_main(["--primary", str(primary), "--extra", str(extra), "--out", str(out)]) == 0
    assert yaml.safe_load((out / "dataset.yaml").read_text())["coarse_labels"] == {}
    scan, _ = load_split(out)
    labels = sorted((s.path.name.split("_")[0], s.label) for s in scan.samples if s.path.name.startswith("fine"))
    assert [label for _, label in labels] == [0] * 3 + [1] * 6 and not scan.problems


def _task(samples: list[Sample]):
    task = create_task("cla", FINE)
    task.configure(trainer_args(), samples)
    return task


def test_a_coarse_sample_makes_the_run_partial_label() -> None:
    fine, coarse = Sample(Path("a.png"), label=0), Sample(Path("b.png"), label=None, allowed=(1, 2))
    task = _task([fine, coarse])

    assert task.partial
    assert task.target(fine).tolist() == [True, False, False] and task.target(coarse).tolist() == [False, True, True]
    loss = task.loss(trainer_args(label_smoothing=0.1), [fine, coarse])
    assert isinstance(loss, PartialLabelLoss)
    assert task.truth_from_columns(task.label_columns(coarse)) == {"label": None, "allowed": (1, 2)}
    assert not _task([fine]).partial
    assert isinstance(_task([fine]).loss(trainer_args(label_smoothing=0.1), [fine]),
                      ClassificationLoss)
    ordinal = _task([fine]).loss(trainer_args(label_smoothing=0.0, ordinal_smoothing=2.0), [fine])
    torch.testing.assert_close(ordinal.soft_labels, ordinal_soft_labels(len(FINE), 2.0))
    assert _task([fine]).loss(trainer_args(), [fine]).soft_labels is None


def test_each_coarse_label_is_drawn_as_one_more_class() -> None:
    samples = [Sample(Path(f"{i}"), label=0) for i in range(2)] + [
        Sample(Path(f"c{i}"), label=None, allowed=(1, 2)) for i in range(8)]
    weights = _task(samples)._draw_weights(samples, None)
    assert weights[:2].sum() == pytest.approx(weights[2:].sum())


def test_balance_by_source_gives_each_source_an_equal_balanced_share() -> None:
    """A merged set: the fine source's classes and the coarse source's labels each get their share, so the
    class cannot be told from the source (here 'fine' would otherwise be 2 of every 3 draws of class 0)."""
    fine = [Sample(Path(f"f{i}"), label=i % 3, extra={"source": "fine"}) for i in range(9)]
    coarse = [Sample(Path(f"c{i}"), label=0 if i < 12 else None, allowed=None if i < 12 else (1, 2),
                     extra={"source": "coarse"}) for i in range(16)]
    samples = fine + coarse
    weights = _task(samples)._draw_weights(samples, None, "source")
    assert weights[:9].sum() == pytest.approx(weights[9:].sum()) == pytest.approx(1.0)
    for label in range(3):
        assert weights[[i for i in range(9) if i % 3 == label]].sum() == pytest.approx(1 / 3)
    assert weights[9:21].sum() == pytest.approx(weights[21:].sum()) == pytest.approx(0.5)  # coarse source: 0 and {1, 2}
    task = _task(samples)
    with pytest.raises(SystemExit, match="'site' is not a metadata column"):
        task.configure(trainer_args(balance_by="site"), samples)
    with pytest.raises(SystemExit, match="--ordinal-smoothing needs a fine label"):
        task.configure(trainer_args(ordinal_smoothing=2.0), samples)
    with pytest.raises(SystemExit, match="--f1-weight needs a fine label"):
        task.configure(trainer_args(f1_weight=0.5), samples)


def test_evaluation_scores_fine_labels_and_counts_coarse_ones_inside_their_set() -> None:
    task = _task([Sample(Path("c"), label=None, allowed=(1, 2))])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0], [5.0, 0, 0]])

    metrics = task.evaluate(logits, targets, []).metrics

    assert metrics["accuracy"] == pytest.approx(0.5)  # the two fine rows: one right
    assert metrics["coarse_accuracy"] == pytest.approx(0.5)  # 4B is inside {4A, 4B}, 2 is not


def test_a_partial_label_run_trains_and_validates_on_the_primary_folds(merged: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(["--data", str(merged), "--out", str(out), "--model", "resnet10t", "--img-size", "32", "--epochs", "1",
         "--batch-size", "8", "--folds", "2", "--fold", "0", "--oversample", "--no-augment"], "cla")

    validation = np.loadtxt(out / "val.csv", dtype=str, delimiter=",", skiprows=1, usecols=0, ndmin=1)
    assert len(validation) == 6 and all("fine" in name for name in validation)
