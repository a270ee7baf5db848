"""Mammography prediction from DICOM: end to end on phantom DICOMs, ensemble weights, bad files, parity with prepare."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from project.mammo import prepare
from project.mammo.dicom import DicomReader
from project.mammo.metrics import aggregate
from project.mammo.phantom import generate
from project.mammo.predict import (
    ERRORS_FILE,
    BatchLoader,
    load_members,
    main,
    positive_probability,
    predict,
    read_rows,
)
from project.mammo.preprocess import MammoPreprocess, read_prepared, to_tensor
from project.models.checkpoint import CheckpointConfig, save_checkpoint
from project.models.factory import create_model

SIZE = (64, 32)
KWARGS = {"in_chans": 1, "num_classes": 1}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mammo_predict") / "phantom"
    generate(out, n_patients=3, seed=5, size=(160, 128))
    return out


def _checkpoint(path: Path, constant: float | None = None, threshold: float = 0.5, prior: float | None = None,
                task: str = "mammo", aggregate_how: str = "mean") -> Path:
    """A tiny resnet10t; with `constant`, its output is that probability whatever the image."""
    torch.manual_seed(0)
    model = create_model("resnet10t", **KWARGS)
    if constant is not None:
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.fill_(math.log(constant / (1 - constant)))
    pre = MammoPreprocess(size=SIZE, aggregate=aggregate_how).to_dict()
    metrics = {} if prior is None else {"positive_rate": prior}
    save_checkpoint(path, model, CheckpointConfig(task, "resnet10t", KWARGS, ["cancer"], pre,
                                                  thresholds={"cancer": threshold}, metrics=metrics))
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _run(phantom: Path, tmp_path: Path, weights: list[Path], *extra: str, csv_path: Path | None = None,
         dicom_dir: Path | None = None) -> tuple[int, list[dict[str, str]], list[dict[str, str]]]:
    out = tmp_path / "out" / "submission.csv"
    csv_path, dicom_dir = csv_path or phantom / "train.csv", dicom_dir or phantom / "train_images"
    code = main(["--csv", str(csv_path), "--dicom-dir", str(dicom_dir), "--weights", *map(str, weights),
                 "--out", str(out), "--backend", "pydicom", "--batch-size", "5", *extra])
    submission = _read_csv(out) if out.exists() else []
    errors = _read_csv(out.parent / ERRORS_FILE) if (out.parent / ERRORS_FILE).exists() else []
    return code, submission, errors


def _breasts(phantom: Path) -> list[str]:
    rows = _read_csv(phantom / "train.csv")
    return list(dict.fromkeys(f"{r['patient_id']}_{r['laterality']}" for r in rows))


def test_end_to_end_from_dicom_files(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _checkpoint(tmp_path / "a.safetensors")
    code, submission, errors = _run(phantom, tmp_path, [weights])
    assert code == 0 and errors == []
    assert [r["prediction_id"] for r in submission] == _breasts(phantom)  # 6 breasts in CSV order
    values = np.array([float(r["cancer"]) for r in submission])
    assert ((0 < values) & (values < 1)).all()
    # the breast value is the mean of its images' probabilities, computed here independently
    rows = read_rows(phantom / "train.csv", phantom / "train_images")
    members = load_members([weights], None, torch.device("cpu"))
    pre = members[0].pre
    with torch.no_grad():
        images = torch.stack([to_tensor(prepare.process_one(DicomReader("pydicom").read_one(r.path), pre.settings(),
                                                             r.laterality)[0], pre) for r in rows])
        probs = positive_probability(members[0].model(images)).numpy()
    _, expected = aggregate([r.prediction_id for r in rows], probs, "mean")
    assert values == pytest.approx(expected, abs=2e-6)
    summary = capsys.readouterr().out
    assert "12/12 images used" in summary and "6 breasts" in summary


def test_max_aggregation_and_binarize(phantom: Path, tmp_path: Path) -> None:
    weights = _checkpoint(tmp_path / "a.safetensors", aggregate_how="max")
    _, mean_rows, _ = _run(phantom, tmp_path, [weights], "--aggregate", "mean")
    _, max_rows, _ = _run(phantom, tmp_path, [weights])
    assert all(float(m["cancer"]) >= float(a["cancer"]) for m, a in zip(max_rows, mean_rows, strict=True))
    assert any(float(m["cancer"]) > float(a["cancer"]) for m, a in zip(max_rows, mean_rows, strict=True))
    ranked = sorted(float(r["cancer"]) for r in max_rows)
    middle = (ranked[2] + ranked[3]) / 2
    _checkpoint(weights, aggregate_how="max", threshold=middle)
    _, binary, _ = _run(phantom, tmp_path, [weights], "--binarize")
    assert [r["cancer"] for r in binary] == [str(int(float(r["cancer"]) >= middle)) for r in max_rows]


def test_ensemble_weights_are_applied_as_given(phantom: Path, tmp_path: Path) -> None:
    low = _checkpoint(tmp_path / "low.safetensors", constant=0.2, threshold=0.9)
    high = _checkpoint(tmp_path / "high.safetensors", constant=0.8, threshold=0.5)
    _, equal, _ = _run(phantom, tmp_path, [low, high])
    assert {r["cancer"] for r in equal} == {"0.500000"}
    _, skewed, _ = _run(phantom, tmp_path, [low, high], "--weights-ratio", "1", "3")
    assert {r["cancer"] for r in skewed} == {"0.650000"}  # 0.25 * 0.2 + 0.75 * 0.8
    # the threshold is the same weighted mean of the members' thresholds: 0.6 -> every breast 1
    _, binary, _ = _run(phantom, tmp_path, [low, high], "--weights-ratio", "1", "3", "--binarize")
    assert {r["cancer"] for r in binary} == {"1"}
    _, binary, _ = _run(phantom, tmp_path, [low, high], "--weights-ratio", "3", "1", "--binarize")
    assert {r["cancer"] for r in binary} == {"0"}  # 0.35 against 0.8


def test_corrupt_and_missing_files_are_listed_and_every_breast_gets_a_row(
        phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    rows = _read_csv(data / "train.csv")
    corrupt = data / "train_images" / rows[0]["patient_id"] / f"{rows[0]['image_id']}.dcm"
    corrupt.write_bytes(b"DICM" + bytes(range(256)) * 4)
    # both images of another breast unusable: one missing, one truncated
    lost = [r for r in rows if (r["patient_id"], r["laterality"]) == (rows[-1]["patient_id"], rows[-1]["laterality"])]
    (data / "train_images" / lost[0]["patient_id"] / f"{lost[0]['image_id']}.dcm").unlink()
    truncated = data / "train_images" / lost[1]["patient_id"] / f"{lost[1]['image_id']}.dcm"
    truncated.write_bytes(truncated.read_bytes()[:600])
    weights = _checkpoint(tmp_path / "c.safetensors", constant=0.4, prior=0.125)
    code, submission, errors = _run(phantom, tmp_path, [weights], csv_path=data / "train.csv",
                                    dicom_dir=data / "train_images")
    assert code == 0
    lost_breast = f"{lost[0]['patient_id']}_{lost[0]['laterality']}"
    by_breast = {r["prediction_id"]: r["cancer"] for r in submission}
    assert list(by_breast) == _breasts(data)
    assert by_breast[lost_breast] == "0.125000"  # the prior
    assert by_breast[f"{rows[0]['patient_id']}_{rows[0]['laterality']}"] == "0.400000"  # from its other image
    listed = {(e["image_id"], e["prediction_id"]) for e in errors}
    assert listed == {(rows[0]["image_id"], f"{rows[0]['patient_id']}_{rows[0]['laterality']}"),
                      (lost[0]["image_id"], lost_breast), (lost[1]["image_id"], lost_breast), ("", lost_breast)}
    assert all(e["reason"] for e in errors)
    captured = capsys.readouterr()
    assert str(corrupt) in captured.err and f"breast {lost_breast}" in captured.err
    assert "9/12 images used" in captured.out and "1 breast(s) given the prior" in captured.out
    code, _, _ = _run(phantom, tmp_path, [weights], "--strict", csv_path=data / "train.csv",
                      dicom_dir=data / "train_images")
    assert code == 1


def test_worker_processes_predict_what_this_process_predicts(phantom: Path, tmp_path: Path) -> None:
    rows = read_rows(phantom / "train.csv", phantom / "train_images")
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"not a DICOM file")
    rows[4] = dataclasses.replace(rows[4], path=corrupt)
    members = load_members([_checkpoint(tmp_path / "a.safetensors")], None, torch.device("cpu"))
    alone = predict(rows, members, torch.device("cpu"), backend="pydicom", batch_size=5, workers=0)
    pooled = predict(rows, members, torch.device("cpu"), backend="pydicom", batch_size=5, workers=2)
    assert pooled.errors == alone.errors and len(alone.errors) == 1 and alone.errors[0][2] == str(corrupt)
    assert np.isnan(pooled.image_probs[4]) and np.count_nonzero(np.isnan(pooled.image_probs)) == 1
    np.testing.assert_allclose(pooled.image_probs, alone.image_probs, rtol=0, atol=1e-6)
    assert pooled.breast_ids == alone.breast_ids and pooled.backends == alone.backends == {"pydicom": len(rows) - 1}


def test_predict_sees_exactly_what_prepare_writes(phantom: Path, tmp_path: Path) -> None:
    pre = MammoPreprocess(size=SIZE)
    prepare.run(phantom / "train.csv", phantom / "train_images", tmp_path / "prepared", size=SIZE, backend="pydicom",
                workers=1, progress=False)
    rows = read_rows(phantom / "train.csv", phantom / "train_images")
    with DicomReader("pydicom") as reader, ThreadPoolExecutor(1) as pool:
        batch = BatchLoader(rows, [pre], reader, pool)(list(range(len(rows))))
    assert batch.errors == {} and batch.indices == list(range(len(rows)))
    manifest = {r["image"]: r["png"] for r in _read_csv(tmp_path / "prepared" / "manifest.csv")}
    for k, row in enumerate(rows):
        expected = to_tensor(read_prepared(tmp_path / "prepared" / manifest[row.image_id], pre), pre)
        assert torch.equal(batch.tensors[pre][k], expected)


def test_bad_arguments_exit_2(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _checkpoint(tmp_path / "a.safetensors")
    assert _run(phantom, tmp_path, [weights, weights], "--weights-ratio", "1")[0] == 2
    assert "1 value(s) for 2 checkpoint(s)" in capsys.readouterr().err
    other = _checkpoint(tmp_path / "cla.safetensors", task="cla")
    assert _run(phantom, tmp_path, [other])[0] == 2
    assert "not a mammography" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("patient_id,image\n1,2\n")
    assert _run(phantom, tmp_path, [weights], csv_path=bad_csv)[0] == 2
    assert "missing column(s) ['image_id', 'laterality']" in capsys.readouterr().err
    assert _run(phantom, tmp_path, [tmp_path / "none.safetensors"])[0] == 2
