"""The patch task: patches.csv as samples, a patch classifier that learns, its trunk in a whole-image model."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from project.mammo.patches import PATCH_LABELS, PatchSettings, load_patches, write_patches
from project.mammo.phantom import synthetic_mammogram
from project.models.checkpoint import load_checkpoint, read_config
from project.models.whole_image import main as convert_main
from project.tasks import PatchTask, create_task
from project.tasks.mammo_patch import PATCH_TASK, malignant_auc
from project.training import run

SETTINGS = PatchSettings(size=32, per_lesion=6, background=6, jitter=0.2, min_breast=0.6, seed=0)
PATIENTS = 6  # two breasts each, one with a malignant lesion (a filled disc) and one with a benign one (a ring)


def _image(seed: int, centre: tuple[int, int], malignant: bool) -> np.ndarray:
    picture = synthetic_mammogram(np.random.default_rng(seed), 256, 192, "L", "CC", cancer=False)
    image = np.rint(picture.image * 200).astype(np.uint8)
    cv2.circle(image, centre, 9, 255, thickness=-1 if malignant else 3)
    return image


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patch_task")
    prepared = root / "prepared"
    (prepared / "images").mkdir(parents=True)
    manifest, lesions = ["image,patient,fold,png"], ["image,severity,x,y,radius"]
    for patient in range(PATIENTS):
        for side, malignant in (("L", True), ("R", False)):
            name, centre = f"p{patient}{side}", (60 + 5 * patient, 110 + 3 * patient)
            cv2.imwrite(str(prepared / "images" / f"{name}.png"), _image(2 * patient + malignant, centre, malignant))
            manifest.append(f"{name},p{patient},{patient % 3},images/{name}.png")
            lesions.append(f"{name},{'malignant' if malignant else 'benign'},{centre[0]},{centre[1]},9")
    (prepared / "manifest.csv").write_text("\n".join(manifest) + "\n")
    (prepared / "lesions.csv").write_text("\n".join(lesions) + "\n")
    write_patches(prepared, root / "patches", SETTINGS)
    return root / "patches"


def test_patches_read_back_with_patient_fold_and_label(patches: Path) -> None:
    scan = load_patches(patches)
    assert not scan.problems and len(scan.samples) == PATIENTS * 2 * (6 + 6)
    counts = np.bincount([s.label for s in scan.samples], minlength=3)
    assert counts.tolist() == [PATIENTS * 2 * 6, PATIENTS * 6, PATIENTS * 6]
    first = scan.samples[0]
    assert (first.group, first.fold, first.extra["image"]) == ("p0", 0, "p0L")
    assert PatchTask.load(patches)[1] == list(PATCH_LABELS)


def test_bad_patch_rows_are_problems_naming_the_row(patches: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader((patches / "patches.csv").open()))
    rows[0]["label"], rows[1]["patch"] = "tumour", "patches/gone.png"
    for row in rows:
        row["patch"] = str(patches / row["patch"]) if row["patch"] != "patches/gone.png" else row["patch"]
    with (tmp_path / "patches.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    scan = load_patches(tmp_path)
    assert len(scan.samples) == len(rows) - 2
    assert [p.kind for p in scan.problems] == ["label", "missing"]
    assert "patches.csv:2" in scan.problems[0].detail and "'tumour'" in scan.problems[0].detail


def test_malignant_auc_against_the_rest() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    assert malignant_auc(np.array([0, 1, 2, 2]), probs) == 1.0
    assert malignant_auc(np.array([0, 2, 2, 0]), probs) == pytest.approx(2.5 / 4)  # one tie, one pair wrong
    assert np.isnan(malignant_auc(np.array([0, 1, 1, 0]), probs))
    task = create_task(PATCH_TASK, PATCH_LABELS)
    assert task.decide(probs, {}).tolist() == [0, 1, 2, 2]


def test_the_patch_classifier_learns_and_becomes_a_whole_image_trunk(patches: Path, tmp_path: Path) -> None:
    out = tmp_path / "patch_run"
    best = run(["--data", str(patches), "--out", str(out), "--model", "resnet10t", "--folds", "3", "--fold", "0",
                "--epochs", "6", "--batch-size", "16", "--lr", "0.003", "--oversample", "--select", "last"], PATCH_TASK)
    assert best["val_macro_f1"] > 0.6 and best["val_auc_malignant"] > 0.8  # chance: 1/3 and 0.5
    config = read_config(out / "best.safetensors")
    assert (config.task, config.model_kwargs, config.preprocess["size"]) == (
        PATCH_TASK, {"in_chans": 1, "num_classes": 3}, [32, 32])
    val_patients = {row["group"] for row in csv.DictReader((out / "val.csv").open())}
    assert val_patients == {"p0", "p3"}  # fold 0: the whole-image fold 0's women, and only them
    assert convert_main(["--patch", str(out / "best.safetensors"), "--out", str(tmp_path / "w.safetensors")]) == 0
    patch_model, _ = load_checkpoint(out / "best.safetensors")
    whole, _ = load_checkpoint(tmp_path / "w.safetensors")
    assert torch.equal(whole.backbone.conv1[0].weight, patch_model.conv1[0].weight)
    with torch.no_grad():
        assert whole.eval()(torch.zeros(1, 1, 128, 96)).shape == (1, 1)
