"""Learned-something checks: short CPU trainings on phantom data beat the majority-class baseline."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from project.data.layout import load_split
from project.metrics import classification_score, feature_score
from project.training import run, split_samples

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_learning(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from project.phantom import generate_phantom

    out = tmp_path_factory.mktemp("learning") / "data"
    generate_phantom(out, n_train=2000, n_test=10, size=96, seed=3)
    return out


@pytest.fixture(scope="module")
def phantom_convnext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four times the classification images of `phantom_learning`: with 800, ConvNeXt-Atto only memorises."""
    from project.phantom import generate_phantom

    out = tmp_path_factory.mktemp("learning_convnext") / "data"
    generate_phantom(out, n_train=8000, n_test=10, size=96, seed=3)
    return out


def _validation(data: Path, kind: str) -> tuple[list, list]:
    scan, _ = load_split(data, "train", kind)
    split = argparse.Namespace(folds=0, fold=0, val_fraction=0.2, seed=0)
    return split_samples(scan.samples, split)


@pytest.mark.slow
def test_feature_recogniser_beats_the_majority_baseline(phantom_learning: Path, tmp_path: Path) -> None:
    best = run(["--config", str(ROOT / "configs" / "fea_phantom_cpu.yaml"), "--data", str(phantom_learning),
                "--out", str(tmp_path / "fea")], "fea")
    train, val = _validation(phantom_learning, "fea")
    for task in ("boundary", "calcification", "direction", "shape"):
        truth = np.array([s.features[task] for s in val])
        majority = int(np.mean([s.features[task] for s in train]) >= 0.5)
        baseline = feature_score(truth, np.full_like(truth, majority))
        print(f"{task}: validation score {best[f'val_{task}']:.3f}, majority baseline {baseline:.3f}")
        assert best[f"val_{task}"] > baseline + 0.1


def _cla_score_and_baseline(config: str, data: Path, out: Path) -> tuple[float, float]:
    """Best validation score of a classifier run with `config`, and the majority-class score on that split."""
    best = run(["--config", str(ROOT / "configs" / config), "--data", str(data), "--out", str(out)], "cla")
    train, val = _validation(data, "cla")
    majority = np.bincount([s.label for s in train]).argmax()
    truth = np.array([s.label for s in val])
    baseline = classification_score(truth, np.full_like(truth, majority))
    print(f"cla ({config}): validation score {best['val_score']:.3f}, majority baseline {baseline:.3f}")
    return best["val_score"], baseline


@pytest.mark.slow
def test_classifier_beats_the_majority_baseline(phantom_learning: Path, tmp_path: Path) -> None:
    """The demo's recipe: the ImageNet-pretrained EfficientNet-Lite0 (offline weights)."""
    score, baseline = _cla_score_and_baseline("cls_phantom_lite0_cpu.yaml", phantom_learning, tmp_path / "cls")
    assert score > baseline + 0.25


@pytest.mark.slow
def test_my_convnext_atto_beats_the_majority_baseline(phantom_convnext: Path, tmp_path: Path) -> None:
    score, baseline = _cla_score_and_baseline("cls_convnext_phantom_cpu.yaml", phantom_convnext, tmp_path / "convnext")
    assert score > baseline + 0.1


def test_my_convnext_fits_a_small_training_set(phantom_small: Path, tmp_path: Path) -> None:
    run(["--data", str(phantom_small), "--out", str(tmp_path / "fit"), "--model", "convnext_atto",
         "--img-size", "32", "--epochs", "12", "--batch-size", "8", "--workers", "0", "--lr", "0.001",
         "--no-augment", "--cutmix", "0", "--label-smoothing", "0", "--sd-max", "0", "--p-block", "0",
         "--p-head", "0"], "cla")
    with (tmp_path / "fit" / "summary.csv").open() as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert losses[-1] < 0.7 * losses[0]
