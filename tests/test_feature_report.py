"""Feature cross-validation table: thresholds from the training fold, baselines, the CLI on real run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from project.data.layout import Sample
from project.feature_report import coin_score, feature_rows, main
from project.training import run


def _samples(values: list[int | None]) -> list[Sample]:
    return [Sample(path=Path(f"{i}.png"), features={"shape": v}) for i, v in enumerate(values)]


def test_the_threshold_comes_from_the_training_fold_and_unknowns_are_left_out() -> None:
    train = (_samples([0, 0, 1, 1]), np.array([[0.1], [0.2], [0.3], [0.4]]))  # separable at 0.25..0.3
    val = (_samples([0, 1, None, 1]), np.array([[0.26], [0.35], [0.9], [0.2]]))

    (row,) = feature_rows("fold0", train, val, ["shape"])

    assert 0.2 < row["threshold"] <= 0.3
    assert row["n"] == 3 and row["positives"] == 2
    decided = (np.array([0.26, 0.35, 0.2]) >= row["threshold"]).astype(int)
    accuracy = float((decided == np.array([0, 1, 1])).mean())
    assert row["score"] == pytest.approx(0.6 * accuracy + 0.4 * row["f1"])
    assert row["score_at_0.5"] == pytest.approx(0.6 * (1 / 3) + 0.4 * 0.0)
    assert row["majority_score"] == pytest.approx(0.6 * (2 / 3) + 0.4 * 0.8)  # training majority is a tie -> 1


def test_a_fair_coin_scores_half_accuracy_and_its_expected_f1() -> None:
    assert coin_score(0.5) == pytest.approx(0.3 + 0.4 * 0.5)
    assert coin_score(0.0) == pytest.approx(0.3)


def test_the_cli_reads_run_folders_and_writes_the_table(phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "fold1"
    run(["--data", str(phantom_small), "--out", str(out), "--folds", "2", "--fold", "1", "--epochs", "1",
         "--img-size", "32", "--batch-size", "16", "--model-kwargs", json.dumps({"growth_rate": 8,
         "block_config": [2, 2, 2, 2]}), "--no-augment", "--cutmix", "0"], "fea")

    assert main(["--cv", str(out), "--out", str(tmp_path / "report")]) == 0

    rows = pd.read_csv(tmp_path / "report" / "folds.csv")
    assert set(rows["feature"]) == {"boundary", "calcification", "direction", "shape"}
    assert (rows["n"] > 0).all() and rows["score"].between(0, 1).all()
    assert "| boundary | 1 |" in (tmp_path / "report" / "cv.md").read_text()
