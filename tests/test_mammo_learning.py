"""Learned-something check for mammography: phantom lesions told from none, per breast, from the DICOMs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from project.fileio import atomic_write_csv
from project.mammo import prepare
from project.mammo.metrics import score_submission
from project.mammo.phantom import generate
from project.mammo.predict import main as predict_main
from project.mammo.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_phantom_lesions_are_told_from_none_per_breast(tmp_path: Path) -> None:
    """configs/mammo_phantom_cpu.yaml trains on half of 100 phantom women; the other half is predicted from
    their DICOMs with the last epoch's checkpoint and scored per breast."""
    dicoms, prepared, run = tmp_path / "phantom", tmp_path / "prepared", tmp_path / "run"
    generate(dicoms, n_patients=100, seed=3, size=(256, 208))
    prepare.run(dicoms / "train.csv", dicoms / "train_images", prepared, size=(128, 64), backend="pydicom",
                progress=False)
    best = train_main(["--config", str(ROOT / "configs" / "mammo_phantom_cpu.yaml"), "--data", str(prepared),
                       "--out", str(run)])

    held_out = {row["patient"] for row in _csv(run / "val.csv")}
    rows = [row for row in _csv(dicoms / "train.csv") if row["patient_id"] in held_out]
    test_csv = tmp_path / "test.csv"
    atomic_write_csv(test_csv, list(rows[0]), [list(row.values()) for row in rows])
    submission = tmp_path / "submission.csv"
    assert predict_main(["--csv", str(test_csv), "--dicom-dir", str(dicoms / "train_images"), "--weights",
                         str(run / "best.safetensors"), "--out", str(submission), "--backend", "pydicom"]) == 0
    result = score_submission(submission, test_csv)
    print(f"mammo phantom: {result['breasts']} held-out breasts ({result['positives']} with a lesion): "
          f"AUC {result['auc']:.3f}, pF1 {result['pf1']:.3f}, best validation epoch AUC {best['val_auc']:.3f}")
    assert result["positives"] >= 10
    assert result["auc"] > 0.9
