"""The learning bench runs end to end on a tiny phantom and writes a table it can be judged by."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_scratch_learning_writes_one_row_per_model(tmp_path: Path) -> None:
    bench = _load("scratch_learning")
    out = tmp_path / "table.csv"
    assert bench.main(["--rows", "resnet10t,convnext_atto-batchnorm", "--n-train", "120", "--phantom-size", "48",
                       "--img-size", "32", "--epochs", "2", "--out", str(out)]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["row"] for row in rows] == ["resnet10t", "convnext_atto-batchnorm"]
    for row in rows:
        assert 0.0 <= float(row["best_val_score"]) <= 1.0
        assert float(row["best_val_score"]) >= float(row["last_val_score"])
        assert row["best_epoch"] in ("1", "2")
        assert 0.0 < float(row["chance"]) < 0.5 and 0.0 < float(row["majority_baseline"]) < 0.5


def test_tta_zoom_keeps_the_size_pads_a_shrunk_view_and_crops_an_enlarged_one() -> None:
    zoom = _load("tta_zoom").zoom
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1)
    assert zoom(images, 1.0, fill).equal(images)
    shrunk = zoom(images, 0.5, fill)
    assert shrunk.shape == images.shape
    for channel, value in enumerate((-1.0, -2.0, -3.0)):
        border = torch.ones(8, 8, dtype=torch.bool)
        border[2:6, 2:6] = False
        assert (shrunk[:, channel][:, border] == value).all()
        assert (shrunk[:, channel, 2:6, 2:6] > 0).all()
    enlarged = zoom(images, 2.0, fill)
    assert enlarged.shape == images.shape
    centre = images[..., 2:6, 2:6].mean(dim=(-2, -1))
    assert torch.allclose(enlarged.mean(dim=(-2, -1)), centre, atol=1e-4)
