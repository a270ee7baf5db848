"""Tests of folder evaluation against ground truth and of the evaluate CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from project.data.submission import SubmissionError, write_cla_csv, write_fea_csv
from project.evaluate import evaluate_folders, format_report, main

REPO = Path(__file__).resolve().parents[1]
# two images per BI-RADS class; each feature has both values
CLA = {f"{i + 1}.jpg": i % 6 for i in range(12)}
FEA = {f"{i + 1}.jpg": [i % 2, (i // 2) % 2, int(i % 3 == 0), int(i < 4)] for i in range(12)}


def _folder(path: Path, cla: dict | None, fea: dict | None, suffix: str = "pre") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if cla is not None:
        write_cla_csv(path / f"cla_{suffix}.csv", cla)
    if fea is not None:
        write_fea_csv(path / f"fea_{suffix}.csv", fea)
    return path


@pytest.fixture
def gt(tmp_path: Path) -> Path:
    return _folder(tmp_path / "gt", CLA, FEA, suffix="gt")


def test_identical_prediction_scores_exactly_one(tmp_path: Path, gt: Path) -> None:
    result = evaluate_folders(_folder(tmp_path / "pred", CLA, FEA), gt)
    assert result["overall"] == 1.0
    assert result["cla"]["score"] == 1.0 and result["fea"]["score"] == 1.0
    assert result["cla"]["kappa"] == 1.0
    assert result["cla"]["confusion_matrix"][3] == [0, 0, 0, 2, 0, 0]
    assert result["fea"]["tasks"]["shape"]["positives"] == 4


def test_ground_truth_folder_scored_against_itself(gt: Path, tmp_path: Path) -> None:
    assert evaluate_folders(gt, gt)["overall"] == 1.0
    as_pre = _folder(tmp_path / "testB_gt", CLA, FEA, suffix="pre")
    assert evaluate_folders(as_pre, as_pre)["overall"] == 1.0


def test_shuffled_prediction_scores_lower(tmp_path: Path, gt: Path) -> None:
    names = list(CLA)
    shuffled_cla = {n: CLA[names[(i + 1) % 12]] for i, n in enumerate(names)}
    shuffled_fea = {n: FEA[names[(i + 5) % 12]] for i, n in enumerate(names)}
    result = evaluate_folders(_folder(tmp_path / "pred", shuffled_cla, shuffled_fea), gt)
    assert result["cla"]["score"] < 0.5
    assert result["fea"]["score"] < 1.0
    assert result["overall"] < 1.0


def test_only_the_parts_in_the_ground_truth_are_scored(tmp_path: Path) -> None:
    cla_only = _folder(tmp_path / "gt", CLA, None, suffix="gt")
    result = evaluate_folders(_folder(tmp_path / "pred", CLA, FEA), cla_only)
    assert set(result) == {"cla"}
    assert "overall" not in format_report(result)


def test_custom_class_list(tmp_path: Path) -> None:
    cla = {name: label % 4 for name, label in CLA.items()}
    gt = _folder(tmp_path / "gt", cla, None, suffix="gt")
    result = evaluate_folders(gt, gt, classes=["2", "3", "4", "5"])
    assert result["cla"]["score"] == 1.0
    assert list(result["cla"]["per_class"]) == ["2", "3", "4", "5"]


def test_missing_row_names_the_image(tmp_path: Path, gt: Path) -> None:
    pred = _folder(tmp_path / "pred", {n: v for n, v in CLA.items() if n != "7.jpg"}, FEA)
    with pytest.raises(SubmissionError, match=r"1 image\(s\).*no row: 7\.jpg"):
        evaluate_folders(pred, gt)


def test_unknown_image_is_an_error(tmp_path: Path, gt: Path) -> None:
    pred = _folder(tmp_path / "pred", CLA, {**FEA, "99.jpg": [0, 0, 0, 0]})
    with pytest.raises(SubmissionError, match=r"fea_pre\.csv.*not in.*99\.jpg"):
        evaluate_folders(pred, gt)


def test_duplicated_row_is_an_error(tmp_path: Path, gt: Path) -> None:
    pred = _folder(tmp_path / "pred", CLA, FEA)
    with (pred / "cla_pre.csv").open("a") as handle:
        handle.write("3.jpg,2\n")
    with pytest.raises(SubmissionError, match=r"duplicated img_name '3\.jpg'"):
        evaluate_folders(pred, gt)


def test_out_of_range_label_is_an_error(tmp_path: Path, gt: Path) -> None:
    pred = _folder(tmp_path / "pred", {**CLA, "5.jpg": 6}, FEA)
    with pytest.raises(SubmissionError, match=r"outside 0\.\.5: 5\.jpg=\[6\]"):
        evaluate_folders(pred, gt)


def test_non_binary_feature_is_an_error(tmp_path: Path, gt: Path) -> None:
    pred = _folder(tmp_path / "pred", CLA, {**FEA, "2.jpg": [0, 2, 0, 0]})
    with pytest.raises(SubmissionError, match=r"fea_pre\.csv.*outside 0\.\.1: 2\.jpg"):
        evaluate_folders(pred, gt)


def test_missing_prediction_file_is_an_error(tmp_path: Path, gt: Path) -> None:
    with pytest.raises(SubmissionError, match="fea_pre.csv"):
        evaluate_folders(_folder(tmp_path / "pred", CLA, None), gt)


def test_folder_without_ground_truth_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SubmissionError, match="no ground truth"):
        evaluate_folders(empty, empty)


def test_main_writes_json(tmp_path: Path, gt: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "score.json"
    assert main(["--pred", str(gt), "--gt", str(gt), "--json", str(out)]) == 0
    assert "overall  1.0000" in capsys.readouterr().out
    assert json.loads(out.read_text())["fea"]["tasks"]["boundary"]["score"] == 1.0


def test_cli_exit_codes(tmp_path: Path, gt: Path) -> None:
    def run(pred: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "project.evaluate", "--pred", str(pred), "--gt", str(gt)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)

    good = run(gt)
    assert good.returncode == 0, good.stderr
    assert "overall  1.0000" in good.stdout and "confusion matrix" in good.stdout
    bad = run(_folder(tmp_path / "pred", {n: v for n, v in CLA.items() if n != "12.jpg"}, FEA))
    assert bad.returncode == 2
    assert "12.jpg" in bad.stderr and bad.stdout == ""
