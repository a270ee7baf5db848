"""Lexicon descriptors of a lesion mask, the classifier on them, its cross-validation on a dataset's folds and its
distillation into the BI-RADS classifier's training targets (--outline-teacher)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import trainer_args
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from project.data.layout import Sample, class_folder_name, label_line
from project.descriptors import (
    DESCRIPTORS,
    LexiconModel,
    cross_fitted_probabilities,
    describe_labelled,
    descriptor_vector,
    lesion_descriptors,
)
from project.lexicon import cross_validate
from project.lexicon import main as lexicon_main
from project.phantom import LesionFeatures, render_image
from project.tasks import ClassificationTask, create_task
from project.training import run

ROOT = Path(__file__).resolve().parents[1]


def _ellipse_mask(shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask


def _star_mask(shape: tuple[int, int], centre: tuple[int, int], outer: int, inner: int, points: int = 7) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    polygon = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1).astype(np.int32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [polygon], 1)
    return mask


def test_shape_orientation_and_margin_descriptors_follow_the_outline() -> None:
    image = np.full((120, 120), 128, np.uint8)
    disc = lesion_descriptors(image, _ellipse_mask((120, 120), (60, 50), (20, 20)))
    tall = lesion_descriptors(image, _ellipse_mask((120, 120), (60, 50), (10, 25)))
    wide = lesion_descriptors(image, _ellipse_mask((120, 120), (60, 50), (25, 10)))
    star = lesion_descriptors(image, _star_mask((120, 120), (60, 50), 30, 12))
    assert disc["circularity"] > 0.85 and disc["solidity"] > 0.95 and disc["convexity"] > 0.95
    assert disc["height_to_width"] == pytest.approx(1.0, abs=0.05)
    assert disc["ellipse_overlap"] > 0.95 and disc["eccentricity"] < 0.2
    assert tall["height_to_width"] > 2 > 0.5 > wide["height_to_width"]
    assert tall["eccentricity"] > 0.85
    assert star["solidity"] < 0.7 and star["convexity"] < disc["convexity"] - 0.1
    assert star["circularity"] < disc["circularity"] - 0.3
    assert disc["area_share"] == pytest.approx(np.pi * 20 * 20 / 120**2, rel=0.05)
    assert disc["depth"] == pytest.approx(50 / 120, abs=0.01)


def test_echo_and_posterior_descriptors_follow_the_pixels() -> None:
    mask = _ellipse_mask((120, 120), (60, 40), (15, 10))
    image = np.full((120, 120), 160, np.uint8)
    image[mask.astype(bool)] = 40
    described = lesion_descriptors(image, mask)
    assert described["echo_mean"] == pytest.approx(40 / 255, abs=1e-6)
    assert described["contrast"] == pytest.approx(120 / 255, abs=1e-6)
    assert described["echo_spread"] == pytest.approx(0, abs=1e-6)
    shadowed, enhanced = image.copy(), image.copy()
    shadowed[51:71, 45:76] = 60  # the lesion-high band behind it, as wide as the lesion
    enhanced[51:71, 45:76] = 220
    assert lesion_descriptors(shadowed, mask)["posterior"] < -0.3
    assert lesion_descriptors(enhanced, mask)["posterior"] > 0.2
    assert described["posterior"] == pytest.approx(0, abs=1e-6)
    assert lesion_descriptors(np.stack([image] * 3, axis=2), mask) == pytest.approx(described)


def test_an_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="the lesion mask is empty"):
        lesion_descriptors(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8))


def test_the_classifier_learns_a_phantom_lesions_shape_from_its_descriptors() -> None:
    """Phantom lesions (project.phantom) whose only difference is an irregular or an oval outline."""
    rng = np.random.default_rng(0)
    vectors, labels = [], []
    for index in range(80):
        shape = index % 2
        rendered = render_image(LesionFeatures(0, 0, 0, shape), 128, rng)
        vectors.append(descriptor_vector(rendered.pixels, rendered.lesion_mask))
        labels.append(shape)
    x, y = np.stack(vectors), np.array(labels)
    model = LexiconModel.fit(x[:50], y[:50], ["oval", "irregular"])
    assert (model.predict_proba(x[50:]).argmax(axis=1) == y[50:]).mean() >= 0.8


def test_the_stored_model_is_sklearns_logistic_regression_in_plain_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, len(DESCRIPTORS))) * rng.uniform(0.1, 10, len(DESCRIPTORS))
    for labels, classes in ((rng.integers(0, 4, 60), ["2", "3", "4", "5"]), (rng.integers(0, 2, 60), ["a", "b"])):
        model = LexiconModel.fit(x, labels, classes)
        reference = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000,
                                                                       random_state=0)).fit(x, labels)
        np.testing.assert_allclose(model.predict_proba(x), reference.predict_proba(x), atol=1e-9)
        model.save(tmp_path / "lexicon.json")
        np.testing.assert_array_equal(LexiconModel.load(tmp_path / "lexicon.json").predict_proba(x),
                                      model.predict_proba(x))
    absent = LexiconModel.fit(x, np.where(labels == 0, 0, 2), ["2", "3", "4"])
    assert absent.predict_proba(x)[:, 1].max() == 0
    (tmp_path / "other.json").write_text('{"kind": "lexicon", "descriptors": ["echo_mean"]}')
    with pytest.raises(ValueError, match=r"other.json: cannot load a lexicon model \(its descriptors"):
        LexiconModel.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"missing.json: cannot load a lexicon model"):
        LexiconModel.load(tmp_path / "missing.json")


CLASSES = ["2", "3", "4", "5"]


def _outline(label: int, rng: np.random.Generator) -> np.ndarray:
    """Class 0 a disc, 1 a wide oval, 2 a tall oval, 3 a star, each with a random size and place."""
    centre = (int(rng.integers(45, 75)), int(rng.integers(40, 60)))
    scale = rng.uniform(0.8, 1.2)
    if label == 3:
        return _star_mask((120, 120), centre, int(28 * scale), int(12 * scale))
    axes = {0: (18, 18), 1: (26, 11), 2: (11, 26)}[label]
    return _ellipse_mask((120, 120), centre, (int(axes[0] * scale), int(axes[1] * scale)))


@pytest.fixture(scope="module")
def outlined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset in the challenge layout with masks and two folds: the class is the lesion's outline."""
    root = tmp_path_factory.mktemp("outlined")
    rng = np.random.default_rng(1)
    rows = ["image,patient,fold"]
    for index in range(48):
        label = index % 4
        folder = root / "train" / "cla" / class_folder_name(CLASSES[label])
        for sub in ("images", "labels", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        mask = _outline(label, rng)
        image = rng.integers(110, 170, (120, 120)).astype(np.uint8)
        image[mask.astype(bool)] = rng.integers(20, 60)
        name = f"case_{index:03d}.png"
        Image.fromarray(image).save(folder / "images" / name)
        Image.fromarray(mask * 255).save(folder / "masks" / name)
        (folder / "labels" / f"case_{index:03d}.txt").write_text(label_line(label + 1, (0.5, 0.5, 0.4, 0.4)))
        rows.append(f"{name},{index},{1 + index // 4 % 2}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump(
        {"classes": CLASSES, "metadata": "metadata.csv", "group_column": "patient", "fold_column": "fold"}))
    return root


def test_cross_validation_fits_on_the_other_folds_and_scores_each(outlined: Path, tmp_path: Path) -> None:
    rows = cross_validate(outlined, tmp_path / "lexicon")
    folds = json.loads((tmp_path / "lexicon" / "cv.json").read_text())
    assert [r["fold"] for r in folds] == ["fold0", "fold1", "mean", "sd"] and [r["n"] for r in folds[:2]] == [24, 24]
    assert rows[-2]["macro_f1"] > 0.8
    metrics = json.loads((tmp_path / "lexicon" / "fold0" / "metrics.json").read_text())
    assert metrics["masks"] == "labelled" and metrics["split"].startswith("official fold 1")
    predictions = (tmp_path / "lexicon" / "fold0" / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "img_name,label,prob_0,prob_1,prob_2,prob_3" and len(predictions) == 25
    assert len(DESCRIPTORS) == len(set(DESCRIPTORS))


def _write_report_fold(folder: Path, names: list[str], probs: np.ndarray) -> None:
    folder.mkdir(parents=True)
    lines = ["img_name,label,prob_0,prob_1,prob_2,prob_3"]
    lines += [f"{n},0," + ",".join(f"{p:.6f}" for p in row) for n, row in zip(names, probs)]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_a_report_is_averaged_in_and_must_score_the_folds_images(outlined: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    cross_validate(outlined, alone)
    report = tmp_path / "report"
    for fold in ("fold0", "fold1"):
        lines = (alone / fold / "predictions.csv").read_text().splitlines()[1:]
        names = [line.split(",")[0] for line in lines]
        _write_report_fold(report / fold, names, np.tile([1.0, 0.0, 0.0, 0.0], (len(names), 1)))
    cross_validate(outlined, tmp_path / "both", with_report=report)
    mine = np.loadtxt(alone / "fold0" / "predictions.csv", delimiter=",", skiprows=1, usecols=(2, 3, 4, 5))
    both = np.loadtxt(tmp_path / "both" / "fold0" / "predictions.csv", delimiter=",", skiprows=1, usecols=(2, 3, 4, 5))
    assert both == pytest.approx((mine + [1.0, 0.0, 0.0, 0.0]) / 2, abs=2e-6)
    short = tmp_path / "short"
    _write_report_fold(short / "fold0", names[:3], np.full((3, 4), 0.25))
    argv = ["cv", "--data", str(outlined), "--out", str(tmp_path / "bad"), "--with-report", str(short)]
    assert lexicon_main(argv) == 1


def test_a_localiser_of_other_images_is_refused(outlined: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "localisers" / "fold0"
    run.mkdir(parents=True)
    (run / "val.csv").write_text("file,label\ntrain/cla/2类/images/case_000.png,0\n")
    code = lexicon_main(["cv", "--data", str(outlined), "--out", str(tmp_path / "out"),
                         "--localiser-from", str(tmp_path / "localisers")])
    assert code == 1
    assert "val.csv: the localiser validated on other images than this fold's" in capsys.readouterr().err


def test_fit_writes_the_model_of_every_labelled_mask(outlined: Path, tmp_path: Path, capsys) -> None:
    assert lexicon_main(["fit", "--data", str(outlined), "--out", str(tmp_path / "lexicon.json")]) == 0
    assert "fitted on 48 lesion masks (0 images without one)" in capsys.readouterr().out
    model = LexiconModel.load(tmp_path / "lexicon.json")
    assert model.classes == CLASSES and model.coef.shape == (4, len(DESCRIPTORS))


def test_column_writes_each_masks_shape_and_margin_class_into_the_metadata(
    outlined: Path, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "data"
    shutil.copytree(outlined, data)
    unmasked = next((data / "train" / "cla").glob("*/masks/case_005.png"))
    unmasked.unlink()
    assert lexicon_main(["column", "--data", str(data)]) == 0
    printed = capsys.readouterr()
    assert "(1 images without a usable mask)" in printed.out
    assert "skipped case_005.png: no labelled mask" in printed.err
    written = (data / "metadata.csv").read_text()
    rows = {row["image"]: row for row in csv.DictReader(io.StringIO(written))}
    assert list(next(iter(rows.values()))) == ["image", "patient", "fold", "outline"]
    assert rows["case_005.png"]["outline"] == "" and rows["case_004.png"]["fold"] == "2"
    stars = [rows[f"case_{i:03d}.png"]["outline"] for i in range(3, 48, 4)]
    assert stars == ["irregular-angular"] * 12
    shapes = [row["outline"].split("-")[0] for name, row in rows.items() if name != "case_005.png"]
    assert 47 / 2 <= shapes.count("oval") <= 35  # the median splits the 47 outlines; every star is below it
    assert lexicon_main(["column", "--data", str(data)]) == 0
    assert (data / "metadata.csv").read_text() == written


def test_column_needs_a_metadata_csv(outlined: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(outlined, data)
    config = yaml.safe_load((data / "dataset.yaml").read_text())
    (data / "dataset.yaml").write_text(yaml.safe_dump({"classes": config["classes"]}))
    assert lexicon_main(["column", "--data", str(data)]) == 1
    assert f"{data}: dataset.yaml names no metadata CSV" in capsys.readouterr().err


def test_the_outline_probe_trains_a_segmenter_and_prints_its_table(outlined: Path, tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("outline_probe", ROOT / "bench" / "outline_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main(["--data", str(outlined), "--fold", "1", "--epochs", "1", "--img-size", "64",
                       "--batch-size", "8", "--run-dir", str(tmp_path / "segmenter")]) == 0
    assert "val_box_iou" in (tmp_path / "segmenter" / "summary.csv").read_text().splitlines()[0]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| labelled outlines | 1.000 |")
    iou = float(rows[2].split("|")[2])
    assert rows[2].startswith("| segmenter's outlines |") and 0.0 <= iou <= 1.0


def test_a_model_of_other_classes_is_refused_by_name() -> None:
    model = LexiconModel.fit(np.random.default_rng(0).normal(size=(20, len(DESCRIPTORS))), np.arange(20) % 4,
                             ["2", "3", "4", "5"])
    model.require_classes(["2", "3", "4", "5"], "the classifier's")
    with pytest.raises(ValueError, match=r"classes \['2', '3', '4', '5'\] are not the classifier's \['2', '3', '4A'"):
        model.require_classes(["2", "3", "4A", "4B", "4C", "5"], "the classifier's")


def _training_images(root: Path) -> list[Sample]:
    return ClassificationTask.load(root)[0].samples


def test_cross_fitted_grades_come_from_models_that_never_saw_the_image(outlined: Path) -> None:
    samples = _training_images(outlined)
    graded, skipped = cross_fitted_probabilities(samples, CLASSES)
    assert set(graded) == {s.path for s in samples} and skipped == {}
    probs, labels = np.stack([graded[s.path] for s in samples]), np.array([s.label for s in samples])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == labels).mean() >= 0.8
    # labels the outline cannot tell: a model fitted on all of them still fits them, cross-fitted grades do not
    shuffled = np.random.default_rng(0).permutation(labels)
    relabelled = [replace(s, label=int(label)) for s, label in zip(samples, shuffled, strict=True)]
    held, _ = cross_fitted_probabilities(relabelled, CLASSES)
    described, _ = describe_labelled(samples)
    vectors = np.stack([described[s.path.name] for s in samples])
    in_sample = LexiconModel.fit(vectors, shuffled, CLASSES).predict_proba(vectors)
    rows = np.arange(len(samples))
    held_truth = np.stack([held[s.path] for s in relabelled])[rows, shuffled]
    assert held_truth.mean() < in_sample[rows, shuffled].mean() - 0.1


def test_the_outline_teacher_mixes_its_grade_into_the_training_targets_only(outlined: Path, capsys) -> None:
    samples = _training_images(outlined)
    train, val = samples[:40], samples[40:]
    train[0] = replace(train[0], mask=None)
    task = create_task("cla", CLASSES)
    task.configure(trainer_args(outline_teacher=0.5), train)
    assert f"skipped {train[0].path.name}: no labelled mask" in capsys.readouterr().err
    graded, _ = cross_fitted_probabilities(train, CLASSES)
    assert train[0].path not in graded
    assert task.target(train[0]).tolist() == np.eye(4)[train[0].label].tolist()
    for sample in train[1:]:
        expected = 0.5 * np.eye(4)[sample.label] + 0.5 * graded[sample.path]
        np.testing.assert_allclose(task.target(sample).numpy(), expected, rtol=1e-6)
    assert [task.target(s).dtype for s in val] == [torch.long] * len(val)
    assert [int(task.target(s)) for s in val] == [s.label for s in val]
    with pytest.raises(SystemExit, match="--outline-teacher works with fine labels, without --aux-column"):
        task.configure(trainer_args(outline_teacher=0.5, mixup=0.2), train)
    unmasked = [replace(s, mask=None) for s in train[:30]] + train[30:34]
    too_few = "--outline-teacher: 4 images have a class and a usable lesion mask"
    with pytest.raises(SystemExit, match=too_few) as refused:
        task.configure(trainer_args(outline_teacher=0.5), unmasked)
    assert str(refused.value).endswith("--outline-teacher 0 trains without it")


def test_a_run_with_the_outline_teacher_trains_and_validates(outlined: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(["--data", str(outlined), "--out", str(out), "--model", "resnet10t", "--img-size", "32", "--epochs", "1",
         "--batch-size", "8", "--folds", "2", "--fold", "0", "--workers", "0", "--cutmix", "0.5",
         "--outline-teacher", "0.5"], "cla")
    with (out / "summary.csv").open(newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 1 and np.isfinite(float(summary[0]["train_loss"]))
    assert 0.0 <= float(summary[0]["val_accuracy"]) <= 1.0
