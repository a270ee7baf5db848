"""Preparation CLI: PNGs + manifest, resume without redoing, bad files listed and skipped."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from project.mammo import prepare
from project.mammo.dicom import dali_status
from project.mammo.phantom import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mammo") / "phantom"
    generate(out, n_patients=2, seed=1, size=(160, 128))
    return out


def _copy(phantom: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(phantom, target)
    return target


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--csv",
        str(data / "train.csv"),
        "--dicom-dir",
        str(data / "train_images"),
        "--out",
        str(out),
        "--size",
        "64x32",
        *extra,
    ]


def test_writes_pngs_and_manifest(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare.main(_args(phantom, out, "--workers", "2")) == 0
    rows = _manifest(out)
    train = list(csv.DictReader(open(phantom / "train.csv")))
    assert [r["image"] for r in rows] == [t["image_id"] for t in train]
    assert list(rows[0]) == list(prepare.MANIFEST_COLUMNS)
    truth = {t["image_id"]: t for t in csv.DictReader(open(phantom / "phantom_truth.csv"))}
    for row, t in zip(rows, train, strict=True):
        assert (row["patient"], row["laterality"], row["view"], row["label"]) == (
            t["patient_id"],
            t["laterality"],
            t["view"],
            t["cancer"],
        )
        image = cv2.imread(str(out / row["png"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 32) and image.dtype == np.uint8
        assert image[:, :16].mean() > image[:, 16:].mean()  # breast on the left
        box = [int(row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")]
        true_box = [int(truth[row["image"]][k]) for k in ("breast_x0", "breast_y0", "breast_x1", "breast_y1")]
        assert box[0] <= true_box[0] and box[1] <= true_box[1]
        assert box[2] >= true_box[2] and box[3] >= true_box[3]
        assert row["flipped"] == str(int(row["laterality"] == "R"))
    backends = {r["backend"] for r in rows}
    assert "pydicom" in backends
    if dali_status()[0]:
        assert "dali-cpu" in backends
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert errors == []


def test_resume_skips_finished_files(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare.run(phantom / "train.csv", phantom / "train_images", out, size=(64, 32), workers=1)
    assert first["written"] == 8 and first["skipped"] == 0
    rows = _manifest(out)
    stamps = {r["image"]: os.stat(out / r["png"]).st_mtime_ns for r in rows}
    # an interrupted run: one PNG never written, the manifest's last line cut short
    (out / rows[2]["png"]).unlink()
    text = (out / "manifest.csv").read_text()
    (out / "manifest.csv").write_text(text[: len(text) - 25])
    second = prepare.run(phantom / "train.csv", phantom / "train_images", out, size=(64, 32), workers=1)
    assert second["written"] == 2 and second["skipped"] == 6
    rows_after = _manifest(out)
    assert [r["image"] for r in rows_after] == [r["image"] for r in rows]
    redone = {rows[2]["image"], rows[-1]["image"]}
    for image, stamp in stamps.items():
        if image not in redone:
            png = next(r["png"] for r in rows_after if r["image"] == image)
            assert os.stat(out / png).st_mtime_ns == stamp, f"{image} was redone"
    third = prepare.run(phantom / "train.csv", phantom / "train_images", out, size=(64, 32), workers=1)
    assert third["written"] == 0 and third["skipped"] == 8


def test_survives_truncated_and_missing_files(phantom: Path, tmp_path: Path) -> None:
    data = _copy(phantom, tmp_path)
    train = list(csv.DictReader(open(data / "train.csv")))
    victim = data / "train_images" / train[1]["patient_id"] / f"{train[1]['image_id']}.dcm"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    gone = data / "train_images" / train[4]["patient_id"] / f"{train[4]['image_id']}.dcm"
    gone.unlink()
    garbage = data / "train_images" / train[6]["patient_id"] / f"{train[6]['image_id']}.dcm"
    garbage.write_bytes(b"DICM" * 100)
    out = tmp_path / "out"
    assert prepare.main(_args(data, out)) == 0
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert {e["image"] for e in errors} == {train[1]["image_id"], train[4]["image_id"], train[6]["image_id"]}
    assert all(e["error"] for e in errors)
    assert len(_manifest(out)) == 5
    # --strict makes the same run fail; the good files are already done
    assert prepare.main(_args(data, out, "--strict")) == 1
    assert len(_manifest(out)) == 5


def test_sixteen_bits_and_settings_guard(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare.main(_args(phantom, out, "--bits", "16", "--limit", "2", "--backend", "pydicom")) == 0
    rows = _manifest(out)
    assert len(rows) == 2 and {r["backend"] for r in rows} == {"pydicom"}
    image = cv2.imread(str(out / rows[0]["png"]), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and image.max() > 255
    assert prepare.main(_args(phantom, out, "--bits", "8")) == 2  # other settings: refused
    assert prepare.main(_args(phantom, out, "--bits", "8", "--overwrite", "--limit", "1")) == 0
    assert len(_manifest(out)) == 1


def test_command_lines(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = tmp_path / "data"
    subprocess.run(
        [sys.executable, "-m", "project.mammo.phantom", "--out", str(data), "--n-patients", "1", "--size", "96x80"],
        check=True,
        cwd=ROOT,
        env=env,
    )
    assert len(list((data / "train_images").rglob("*.dcm"))) == 4
    done = subprocess.run(
        [sys.executable, "-m", "project.mammo.prepare", *_args(data, tmp_path / "out")],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "4 written" in done.stdout
    assert len(_manifest(tmp_path / "out")) == 4
