"""External validation: class mapping by BI-RADS category, figures, the CLI on a phantom with finer classes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from project.data.layout import Sample
from project.data.transforms import Preprocess
from project.external import ClassMappingError, figures, main, map_classes
from project.models.checkpoint import CheckpointConfig, save_checkpoint
from project.models.factory import create_model


def test_finer_classes_map_onto_the_coarse_category_and_equal_names_onto_themselves() -> None:
    assert map_classes(["2", "3", "4A", "4b类", "4C", "5"], ["2", "3", "4", "5"]) == [0, 1, 2, 2, 2, 3]
    assert map_classes(["BI-RADS 4A", "5"], ["4A", "4B", "5"]) == [0, 2]
    with pytest.raises(ClassMappingError, match="'6' matches none"):
        map_classes(["6"], ["2", "3", "4", "5"])


def test_figures_score_the_malignancy_against_pathology_where_known() -> None:
    samples = [Sample(path=Path(f"{i}.png"), label=0, extra={"pathology": p})
               for i, p in enumerate(["benign", "malignant", "", "malignant"])]
    truth = np.array([0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])

    result = figures(samples, truth, probs, ["3", "4"])

    assert result["accuracy"] == pytest.approx(0.5)
    assert result["auc_birads"] == pytest.approx(1.0)  # 0.1 below 0.8, 0.4, 0.3
    assert result["auc_pathology"] == pytest.approx(1.0)  # the unknown one is left out


def test_the_cli_scores_each_checkpoint_and_their_ensemble(phantom_small: Path, tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        kwargs = {"num_classes": 4}
        path = tmp_path / f"cls{seed}.safetensors"
        save_checkpoint(path, create_model("resnet10t", **kwargs),
                        CheckpointConfig("cla", "resnet10t", kwargs, ["2", "3", "4", "5"], Preprocess(32).to_dict()))
        paths.append(path)

    assert main(["--weights", *map(str, paths), "--data", str(phantom_small), "--out", str(tmp_path / "ext")]) == 0

    table = (tmp_path / "ext" / "external.md").read_text()
    assert "mean ± sd of the single models" in table and "**ensemble**" in table
    with (tmp_path / "ext" / "cla_prob.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["img_name", "2", "3", "4", "5", "malignancy"] and len(rows) > 0
