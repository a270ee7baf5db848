"""The validation report on phantom runs: files, valid plots, numbers equal to project.evaluate."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image
from sklearn.metrics import roc_auc_score

from project.data.layout import Sample
from project.evaluate import evaluate_folders
from project.metrics import classification_report
from project.models.convnext import build_my_convnext
from project.models.factory import create_model
from project.report import (
    ReportError,
    Validation,
    baselines,
    build_report,
    calibration,
    fold_figures,
    format_cv_table,
    gradcam_target_layer,
    main,
    malignancy,
    malignancy_index,
    summarise_folds,
)
from project.tasks import AuxiliaryColumn
from project.training import run

TINY = ["--model", "convnext_atto", "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0"]
PHANTOM_CLASSES = ["2", "3", "4A", "4B", "4C", "5"]


@pytest.fixture(scope="module")
def fold_runs(phantom_small: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two one-epoch runs, the two folds of a 2-fold split of the phantom."""
    root = tmp_path_factory.mktemp("runs")
    runs = [root / f"fold{k}" for k in (0, 1)]
    for k, out in enumerate(runs):
        run(["--data", str(phantom_small), "--out", str(out), "--folds", "2", "--fold", str(k), *TINY], "cla")
    return runs


@pytest.fixture(scope="module")
def report(fold_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    return out, build_report(fold_runs[0], out, cam_cases=3)


def _predictions(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["img_name", "label", *(f"prob_{k}" for k in range(len(PHANTOM_CLASSES)))]
    probs = np.array([[float(row[f"prob_{k}"]) for k in range(len(PHANTOM_CLASSES))] for row in rows])
    return [r["img_name"] for r in rows], np.array([int(r["label"]) for r in rows]), probs


def test_report_files_and_plots(report: tuple[Path, dict]) -> None:
    out, metrics = report
    page = (out / "index.html").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in out.glob("*.png"))
    cams = {f"gradcam_{kind}.png" for kind in ("right", "wrong") if metrics["gradcam"][kind]}
    assert set(pngs) == {"learning_curves.png", "confusion_matrix.png", "per_class.png", "roc_malignancy.png",
                         "reliability.png", *cams}
    assert set(re.findall(r"src='([^']+\.png)'", page)) == set(pngs)
    for name in pngs:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0, name
    for name in ("metrics.json", "predictions.csv", "pred/cla_pre.csv", "gt/cla_gt.csv"):
        assert (out / name).stat().st_size > 0


def test_numbers_match_project_evaluate_and_the_training_run(report: tuple[Path, dict], phantom_small: Path) -> None:
    out, returned = report
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["cla"] == json.loads(json.dumps(evaluate_folders(out / "pred", out / "gt", PHANTOM_CLASSES)["cla"]))
    names, labels, probs = _predictions(out)
    recomputed = classification_report(labels, probs.argmax(axis=1), PHANTOM_CLASSES)
    for key in ("score", "accuracy", "macro_f1", "kappa", "per_class", "confusion_matrix"):
        assert metrics["cla"][key] == recomputed[key], key
    # The report rebuilt the trainer's validation split: half the 48 phantom cla images, same accuracy.
    assert metrics["cla"]["n"] == len(names) == 24
    assert metrics["cla"]["accuracy"] == pytest.approx(metrics["checkpoint_metrics"]["accuracy"])
    assert metrics["split"] == "fold 0 of 2 (seed 0)"
    malignant = (labels >= 2).astype(int)
    assert metrics["malignancy"]["positive_from"] == "4A"
    assert metrics["malignancy"]["birads"]["auc"] == pytest.approx(roc_auc_score(malignant, probs[:, 2:].sum(axis=1)),
                                                                   abs=1e-5)
    assert metrics["malignancy"]["biopsy"] is None
    assert 0 <= metrics["calibration"]["ece"] <= 1
    assert metrics["gradcam"]["target_layer"] == "stages.3"
    assert len(metrics["gradcam"]["right"]) + len(metrics["gradcam"]["wrong"]) > 0


def test_cross_validation_table(fold_runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cv"
    assert main(["--cv", *map(str, fold_runs), "--out", str(out), "--cam-cases", "1"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "cv.json").read_text(encoding="utf-8"))
    assert [r["fold"] for r in rows] == ["fold0", "fold1", "mean", "sd"]
    per_fold = [json.loads((out / name / "metrics.json").read_text(encoding="utf-8")) for name in ("fold0", "fold1")]
    accuracies = [m["cla"]["accuracy"] for m in per_fold]
    assert rows[2]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert rows[3]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert rows[2]["n"] == 48 and rows[2]["auc_biopsy"] is None
    assert f"{np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f}" in printed
    assert printed == (out / "cv.md").read_text(encoding="utf-8")
    assert "fold0/index.html" in (out / "index.html").read_text(encoding="utf-8")


def test_recipe_ensemble_averages_the_same_fold_of_each_recipe(
    fold_runs: list[Path], report: tuple[Path, dict], phantom_small: Path, tmp_path: Path,
) -> None:
    other_recipe = tmp_path / "recipe_b"
    run(["--data", str(phantom_small), "--out", str(other_recipe / "fold0"), "--folds", "2", "--fold", "0",
         *TINY, "--lr", "0.0003"], "cla")
    alone = build_report(other_recipe / "fold0", tmp_path / "b_alone", cam_cases=0)
    both = build_report(fold_runs[0], tmp_path / "ensemble", cam_cases=0, members_from=[other_recipe])
    names, _, first_probs = _predictions(report[0])
    assert _predictions(tmp_path / "b_alone")[0] == _predictions(tmp_path / "ensemble")[0] == names
    expected = (first_probs + _predictions(tmp_path / "b_alone")[2]) / 2
    np.testing.assert_allclose(_predictions(tmp_path / "ensemble")[2], expected, atol=2e-6)
    assert both["ensemble"] == [str(other_recipe / "fold0" / "best.safetensors")]
    assert alone["cla"]["n"] == both["cla"]["n"] == 24
    assert "averaged with" in (tmp_path / "ensemble" / "index.html").read_text(encoding="utf-8")


def test_recipe_ensemble_refuses_a_member_from_another_fold(fold_runs: list[Path], tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "wrong_recipe"
    wrong.mkdir()
    (wrong / "fold0").symlink_to(fold_runs[1], target_is_directory=True)
    code = main(["--run", str(fold_runs[0]), "--out", str(tmp_path / "out"), "--members-from", str(wrong)])
    assert code == 2
    message = capsys.readouterr().err
    assert str(wrong / "fold0" / "val.csv") in message and "same fold" in message


def test_summarise_folds_skips_undefined_figures() -> None:
    def fold(accuracy: float, biopsy: float | None) -> dict:
        cla = {"n": 10, "macro_f1": accuracy / 2, "accuracy": accuracy, "kappa": None}
        return {"cla": cla, "malignancy": {"birads": {"auc": 0.5}, "biopsy": biopsy and {"auc": biopsy}}}

    rows = summarise_folds({"a": fold(0.6, 0.8), "b": fold(0.8, None), "c": fold(1.0, 0.9)})
    mean, sd = rows[-2], rows[-1]
    assert mean["accuracy"] == pytest.approx(0.8) and sd["accuracy"] == pytest.approx(0.2)
    assert mean["auc_biopsy"] == pytest.approx(0.85) and mean["kappa"] is None and mean["n"] == 30
    assert "| **mean ± sd** | 30 | 0.4000 ± 0.1000 | 0.8000 ± 0.2000 | n/a |" in format_cv_table(rows)


def _biopsy_validation(**head) -> Validation:
    """Five images, the third without a biopsy outcome; P(≥4) = 0.8, 0.1, 0.6, 0.4, 0.3."""
    pathology = ["malignant", "benign", "", "malignant", "benign"]
    samples = [Sample(Path(f"{i}.png"), label=label, extra={"pathology": p} if p else {})
               for i, (label, p) in enumerate(zip([2, 0, 3, 1, 3], pathology))]
    probs = np.array([[0.1, 0.1, 0.8, 0.0], [0.7, 0.2, 0.1, 0.0], [0.2, 0.2, 0.3, 0.3],
                      [0.5, 0.1, 0.2, 0.2], [0.2, 0.5, 0.3, 0.0]])
    return Validation(samples, probs, ["2", "3", "4", "5"], members=[], skipped={}, split="", data=Path(), **head)


def test_malignancy_uses_biopsy_truth_where_known() -> None:
    result = malignancy(_biopsy_validation())
    # Biopsy over the four known images, BI-RADS ≥ 4 over all five.
    assert result["biopsy"]["n"] == 4 and result["biopsy"]["auc"] == pytest.approx(1.0)
    assert result["birads"]["n"] == 5 and result["birads"]["auc"] == pytest.approx(roc_auc_score(
        [1, 0, 1, 0, 1], [0.8, 0.1, 0.6, 0.4, 0.3]))
    assert "head_biopsy" not in result


def test_a_pathology_heads_probability_is_scored_against_biopsy_beside_p_birads_4() -> None:
    aux = np.array([[0.3, 0.7], [0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.2, 0.8]])
    head = AuxiliaryColumn("pathology", ("benign", "malignant"))
    result = malignancy(_biopsy_validation(aux=aux, aux_head=head))
    # Known: malignant 0.7 and 0.4 against benign 0.1 and 0.8: two of four pairs ordered.
    assert result["head_biopsy"]["n"] == 4 and result["head_biopsy"]["auc"] == pytest.approx(0.5)
    figures = fold_figures({"cla": {"n": 5, "macro_f1": 0.5, "accuracy": 0.5, "kappa": 0.1}, "malignancy": result})
    assert figures["auc_biopsy_head"] == pytest.approx(0.5) and figures["auc_biopsy"] == pytest.approx(1.0)
    other = malignancy(_biopsy_validation(aux=aux, aux_head=AuxiliaryColumn("tissue", ("dense", "fatty"))))
    assert "head_biopsy" not in other


def test_malignancy_index_and_calibration() -> None:
    assert malignancy_index(["2", "3", "4", "5"]) == 2
    assert malignancy_index(PHANTOM_CLASSES) == 2
    assert malignancy_index(["BI-RADS 3", "4类a", "5"]) == 1
    with pytest.raises(ReportError, match="BI-RADS 4 or above"):
        malignancy_index(["1", "2", "3"])
    # Confidence 0.75 on four images of which three are right: calibrated; 0.95 with half right: ECE 0.45/2.
    probs = np.array([[0.75, 0.25]] * 4 + [[0.95, 0.05]] * 4)
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1])
    result = calibration(probs, labels)
    assert result["ece"] == pytest.approx(0.225)
    assert [b["count"] for b in result["bins"]] == [0] * 7 + [4, 0, 4]


def test_gradcam_layer_for_myconvnext_and_timm_fallback() -> None:
    name, layer = gradcam_target_layer(build_my_convnext("convnext_atto", num_classes=4))
    assert name == "stages.3"
    resnet = timm.create_model("resnet18", num_classes=4)
    assert gradcam_target_layer(resnet) == ("layer4", resnet.layer4)
    with_map = create_model("resnet18", num_classes=4, lesion_map=True)  # not its lesion head, off the eval path
    assert gradcam_target_layer(with_map) == ("net.layer4", with_map.net.layer4)


def test_missing_run_files_are_named(tmp_path: Path, capsys) -> None:
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'args.yaml'}: not found" in capsys.readouterr().err


def test_label_blind_baselines_from_the_class_counts() -> None:
    metrics = {"cla": {"per_class": {"2": {"support": 2}, "3": {"support": 6}, "4": {"support": 2}}}}
    result = baselines(metrics)
    assert result["majority"] == pytest.approx({"accuracy": 0.6, "macro_f1": 2 * 0.6 / 1.6 / 3})
    assert result["chance"]["accuracy"] == pytest.approx(1 / 3)
    assert result["chance"]["macro_f1"] == pytest.approx((0.4 / 1.6 * 2 + 1.2 / 2.8) / 3)


def test_lesion_column_scores_the_views_of_a_lesion_with_their_mean(
    fold_runs: list[Path], report: tuple[Path, dict], tmp_path: Path, capsys,
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(fold_runs[0], run_dir)
    with (run_dir / "val.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header, rows = [*(reader.fieldnames or []), "lesion"], list(reader)
    # Images of one label, two at a time, are called two views of one lesion; every fifth image has no lesion id.
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        count = seen[row["label"]] = seen.get(row["label"], -1) + 1
        row["lesion"] = row["group"] = "" if index % 5 == 4 else f"{row['label']}-{count // 2}"
    with (run_dir / "val.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows(rows)
    lesion_of = {Path(r["file"]).name: r["lesion"] for r in rows if r["lesion"]}
    assert len(set(lesion_of.values())) < len(lesion_of)  # some lesions do have two views

    metrics = build_report(run_dir, tmp_path / "out", cam_cases=0, lesion_column="lesion")
    names, _, single = _predictions(report[0])
    assert _predictions(tmp_path / "out")[0] == names
    members = {}
    for name, probs in zip(names, single):
        members.setdefault(lesion_of.get(name, name), []).append(probs)
    expected = np.array([np.mean(members[lesion_of.get(name, name)], axis=0) for name in names])
    np.testing.assert_allclose(_predictions(tmp_path / "out")[2], expected, atol=2e-6)
    assert (metrics["lesion_column"], metrics["lesions"]) == ("lesion", len(members))
    assert "lesions)" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    build_report(run_dir, tmp_path / "by_group", cam_cases=0, lesion_column="group")  # val.csv's patient column
    np.testing.assert_array_equal(_predictions(tmp_path / "by_group")[2], _predictions(tmp_path / "out")[2])

    assert main(["--run", str(run_dir), "--out", str(tmp_path / "bad"), "--lesion-column", "case"]) == 2
    message = capsys.readouterr().err
    assert "'case'" in message and "lesion" in message
