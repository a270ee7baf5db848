"""project.pool: saved reports averaged fold by fold, checked against the dataset, scored like a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from project.pool import main as pool_main
from project.pool import pool_reports
from project.report import ReportError, read_prediction_file
from tests.conftest import write_cla_dataset

CLASSES = ["2", "3", "4", "5"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Sixteen images in two folds; the `lesion` column names each image's class, so a fold's images of one
    class form one lesion."""
    return write_cla_dataset(tmp_path / "data", CLASSES, per_class=4, columns={"lesion": lambda name: f"L{name}"})


def _fold_images(root: Path) -> dict[str, list[tuple[str, int]]]:
    """{fold<k>: [(image, label)]}, fold0 holding the metadata's fold 1."""
    rows = [line.split(",") for line in (root / "metadata.csv").read_text().splitlines()[1:]]
    return {f"fold{k}": [(r[0], CLASSES.index(r[0].split("_")[1])) for r in rows if r[2] == str(k + 1)]
            for k in range(2)}


def _write_report(out: Path, root: Path, seed: int, lesion_column: str | None = None, reverse: bool = False) -> dict:
    """A report folder as project.report --cv writes it (predictions.csv and metrics.json per fold), random
    probabilities; returns {fold: (names, probs)} in the folds' file order."""
    rng = np.random.default_rng(seed)
    written = {}
    for fold, images in _fold_images(root).items():
        probs = rng.dirichlet(np.ones(len(CLASSES)), len(images))
        rows = list(zip(images, probs))[::-1] if reverse else list(zip(images, probs))
        lines = ["img_name,label," + ",".join(f"prob_{k}" for k in range(len(CLASSES)))]
        lines += [f"{name},{label}," + ",".join(f"{p:.6f}" for p in row) for (name, label), row in rows]
        (out / fold).mkdir(parents=True)
        (out / fold / "predictions.csv").write_text("\n".join(lines) + "\n")
        metrics = {"split": f"official fold {fold[-1]}", "lesion_column": lesion_column}
        (out / fold / "metrics.json").write_text(json.dumps(metrics))
        written[fold] = ([name for name, _ in images], np.round(probs, 6))
    return written


def test_the_pool_scores_the_mean_of_the_reports_probabilities(dataset: Path, tmp_path: Path) -> None:
    first = _write_report(tmp_path / "a", dataset, seed=1)
    second = _write_report(tmp_path / "b", dataset, seed=2, reverse=True)
    rows = pool_reports([tmp_path / "a", tmp_path / "b"], dataset, tmp_path / "pool")
    assert [r["fold"] for r in rows] == ["fold0", "fold1", "mean", "sd"] and [r["n"] for r in rows[:2]] == [8, 8]
    for k, fold in enumerate(("fold0", "fold1")):
        names, labels, probs = read_prediction_file(tmp_path / "pool" / fold)
        assert names == first[fold][0]
        assert probs == pytest.approx((first[fold][1] + second[fold][1]) / 2, abs=1e-6)
        expected = f1_score(labels, probs.argmax(axis=1), average="macro", labels=range(4), zero_division=0)
        assert rows[k]["macro_f1"] == pytest.approx(expected)
        metrics = json.loads((tmp_path / "pool" / fold / "metrics.json").read_text())
        assert metrics["pooled"] == [str(tmp_path / "a" / fold), str(tmp_path / "b" / fold)]
        assert metrics["split"] == f"official fold {fold[-1]}" and metrics["malignancy"]["positive_from"] == "4"
    assert (tmp_path / "pool" / "cv.md").read_text().startswith("| fold | images | macro-F1")


def test_the_lesion_column_averages_the_pooled_views_of_each_lesion(dataset: Path, tmp_path: Path) -> None:
    first = _write_report(tmp_path / "a", dataset, seed=1)
    second = _write_report(tmp_path / "b", dataset, seed=2)
    pool_reports([tmp_path / "a", tmp_path / "b"], dataset, tmp_path / "pool", lesion_column="lesion")
    names, labels, probs = read_prediction_file(tmp_path / "pool" / "fold0")
    mean = (first["fold0"][1] + second["fold0"][1]) / 2
    for label in range(4):
        views = labels == label
        assert views.sum() == 2
        assert probs[views] == pytest.approx(np.tile(mean[views].mean(axis=0), (2, 1)), abs=1e-6)
    assert json.loads((tmp_path / "pool" / "fold0" / "metrics.json").read_text())["lesions"] == 4


def test_one_report_with_a_lesion_column_is_rescored_per_lesion(dataset: Path, tmp_path: Path, capsys) -> None:
    alone = _write_report(tmp_path / "a", dataset, seed=1)
    argv = [str(tmp_path / "a"), "--data", str(dataset), "--out", str(tmp_path / "les"), "--lesion-column", "lesion"]
    assert pool_main(argv) == 0
    assert "| **mean ± sd** | 16 |" in capsys.readouterr().out
    _, labels, probs = read_prediction_file(tmp_path / "les" / "fold1")
    views = labels == 2
    assert probs[views] == pytest.approx(np.tile(alone["fold1"][1][views].mean(axis=0), (2, 1)), abs=1e-6)


def _edit_fold(report: Path, fold: str, edit) -> None:
    path = report / fold / "predictions.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda lines: lines[:-1], r"image\(s\) differ from"),
    (lambda lines: [lines[0], lines[1].replace(",0,", ",1,", 1), *lines[2:]], "other classes or labels"),
    (lambda lines: [lines[0], "unknown.png" + lines[1][lines[1].index(","):], *lines[2:]], r"image\(s\) differ from"),
])
def test_reports_of_other_images_or_labels_are_refused_by_file(dataset: Path, tmp_path: Path, damage,
                                                               message: str) -> None:
    _write_report(tmp_path / "a", dataset, seed=1)
    _write_report(tmp_path / "b", dataset, seed=2)
    _edit_fold(tmp_path / "b", "fold1", damage)
    with pytest.raises(ReportError, match=message) as caught:
        pool_reports([tmp_path / "a", tmp_path / "b"], dataset, tmp_path / "pool")
    assert str(tmp_path / "b" / "fold1" / "predictions.csv") in str(caught.value)


def test_a_label_the_dataset_does_not_give_is_refused(dataset: Path, tmp_path: Path) -> None:
    for report in ("a", "b"):
        _write_report(tmp_path / report, dataset, seed=1)
        _edit_fold(tmp_path / report, "fold0", lambda lines: [lines[0], lines[1].replace(",0,", ",3,", 1),
                                                               *lines[2:]])
    with pytest.raises(ReportError, match="carry another label in"):
        pool_reports([tmp_path / "a", tmp_path / "b"], dataset, tmp_path / "pool")


def test_per_lesion_reports_and_other_folds_are_refused_from_the_command_line(
    dataset: Path, tmp_path: Path, capsys,
) -> None:
    _write_report(tmp_path / "a", dataset, seed=1)
    _write_report(tmp_path / "les", dataset, seed=2, lesion_column="lesion")
    argv = [str(tmp_path / "a"), str(tmp_path / "les"), "--data", str(dataset), "--out", str(tmp_path / "p")]
    assert pool_main(argv) == 2
    assert "scored per lesion; pool per-image reports" in capsys.readouterr().err
    _write_report(tmp_path / "one_fold", dataset, seed=3)
    (tmp_path / "one_fold" / "fold1" / "predictions.csv").unlink()
    argv[1] = str(tmp_path / "one_fold")
    assert pool_main(argv) == 2
    assert "folds ['fold0'] differ from" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_damaged_predictions_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "fold0"
    folder.mkdir()
    (folder / "predictions.csv").write_text("img_name,label,prob_0,prob_1\na.png,0,0.5,\n")
    with pytest.raises(ReportError, match="predictions.csv: not a report's predictions"):
        read_prediction_file(folder)
    (folder / "predictions.csv").write_text("img_name,label,prob_0\n")
    with pytest.raises(ReportError, match="predictions.csv: no predictions"):
        read_prediction_file(folder)


def test_a_damaged_cv_table_is_named(dataset: Path, tmp_path: Path) -> None:
    _write_report(tmp_path / "a", dataset, seed=1)
    (tmp_path / "a" / "cv.json").write_text("[{\"fold\": ")
    with pytest.raises(ReportError, match="cv.json: not a readable cv.json"):
        pool_reports([tmp_path / "a"], dataset, tmp_path / "pool")
