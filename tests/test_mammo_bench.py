"""The mammography prediction bench runs end to end on a few phantom DICOMs and writes its table."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mammo_predict_bench_writes_one_row_per_model(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("mammo_predict_bench", ROOT / "bench" / "mammo_predict.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "table.csv"
    assert bench.main(["--models", "resnet10t", "--n-images", "8", "--batch-size", "4", "--dicom-size", "160x128",
                       "--img-size", "64x32", "--backend", "pydicom", "--device", "cpu", "--out", str(out)]) == 0
    with out.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["model"] == "resnet10t" and row["input"] == "64x32" and row["images"] == "8"
    assert float(row["end_to_end_per_s"]) > 0 and float(row["bare_forward_per_s"]) > 0
    end_to_end, bare = float(row["end_to_end_per_s"]), float(row["bare_forward_per_s"])
    assert abs(float(row["ratio"]) - end_to_end / bare) < 0.02  # the cells are rounded
    assert row["decoders"] == "pydicom:8"
