"""pF-beta on hand-computed cases, per-breast aggregation, threshold search, submission scoring."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from project.data.submission import SubmissionError
from project.evaluate import main as evaluate_main
from project.mammo.metrics import aggregate, breast_report, prediction_id, read_breast_labels, score_submission
from project.metrics import best_threshold_pf1, pfbeta


def test_pfbeta_perfect_and_all_zero() -> None:
    labels = np.array([1, 0, 1, 0])
    assert pfbeta(labels, labels.astype(float)) == 1.0
    assert pfbeta(labels, np.zeros(4)) == 0.0


def test_pfbeta_without_positive_labels_is_zero() -> None:
    assert pfbeta(np.zeros(3), np.array([0.3, 0.9, 0.0])) == 0.0


def test_pfbeta_clips_and_weights_recall_by_beta() -> None:
    # clipped to [1, 0.5, 0.5, 0]: pTP 1.5, pFP 0.5 -> P 0.75, R 0.75
    labels, predictions = np.array([1, 1, 0, 0]), np.array([1.7, 0.5, 0.5, -2.0])
    assert pfbeta(labels, predictions) == pytest.approx(0.75)
    # labels 1,1,1 with predictions 1,0,0 and a negative at 0.5: P = 1/1.5, R = 1/3
    labels, predictions = np.array([1, 1, 1, 0]), np.array([1.0, 0.0, 0.0, 0.5])
    p, r = 1 / 1.5, 1 / 3
    assert pfbeta(labels, predictions, beta=2.0) == pytest.approx(5 * p * r / (4 * p + r))
    assert pfbeta(labels, predictions, beta=0.5) == pytest.approx(1.25 * p * r / (0.25 * p + r))


def test_prediction_id() -> None:
    assert prediction_id(10008, " l") == "10008_L"


def test_aggregate_mean_and_max_keep_first_appearance_order() -> None:
    ids = ["7_R", "3_L", "7_R", "3_L", "3_L", "1_L"]
    values = [0.2, 0.1, 0.6, 0.4, 0.7, 0.9]
    names, means = aggregate(ids, values, "mean")
    assert names == ["7_R", "3_L", "1_L"]
    assert means == pytest.approx([0.4, 0.4, 0.9])
    names, maxima = aggregate(ids, values, "max")
    assert names == ["7_R", "3_L", "1_L"]
    assert maxima == pytest.approx([0.6, 0.7, 0.9])
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(ids, values, "median")


def test_threshold_search_finds_the_brute_force_optimum() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 0])
    probs = np.array([0.05, 0.9, 0.35, 0.3, 0.6, 0.55, 0.1, 0.7, 0.2, 0.4])
    best = max(pfbeta(labels, (probs >= t).astype(float)) for t in itertools.chain(probs, [1.1]))
    threshold, score = best_threshold_pf1(labels, probs)
    assert score == pytest.approx(best)
    assert pfbeta(labels, (probs >= threshold).astype(float)) == pytest.approx(best)
    # here the optimum keeps 0.6, 0.7, 0.9 and drops 0.55: F1 = 2*3/(3+4) = 6/7
    assert best == pytest.approx(6 / 7)
    assert 0.55 < threshold <= 0.6


def test_breast_report_aggregates_before_scoring() -> None:
    ids = ["1_L", "1_L", "1_R", "1_R", "2_L", "2_L"]
    labels = [1, 1, 0, 0, 0, 0]
    probs = [0.9, 0.1, 0.2, 0.2, 0.6, 0.0]
    mean = breast_report(ids, labels, probs, "mean")
    assert mean["breasts"] == 3 and mean["positives"] == 1
    assert mean["pf1"] == pytest.approx(pfbeta(np.array([1, 0, 0]), np.array([0.5, 0.2, 0.3])))
    assert mean["auc"] == 1.0
    maxed = breast_report(ids, labels, probs, "max")
    assert maxed["pf1"] == pytest.approx(pfbeta(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.6])))
    assert maxed["pf1_binarised"] == 1.0 and 0.6 < maxed["threshold"] <= 0.9


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_score_submission_against_per_image_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = _write(tmp_path / "train.csv", "patient_id,image_id,laterality,cancer\n"
                    "1,11,L,1\n1,12,L,1\n1,13,R,0\n2,21,L,0\n2,22,R,0\n")
    assert read_breast_labels(labels) == {"1_L": 1, "1_R": 0, "2_L": 0, "2_R": 0}
    sub = _write(tmp_path / "submission.csv", "prediction_id,cancer\n2_R,0\n1_L,1\n1_R,0.5\n2_L,1.5\n")
    result = score_submission(sub, labels)
    # clipped: pTP 1, pFP 1.5 -> P 0.4, R 1 -> 0.8/1.4
    assert result["pf1"] == pytest.approx(0.8 / 1.4)
    assert result["breasts"] == 4 and result["positives"] == 1 and not result["binary"]
    assert result["pf1_at_best_threshold"] == pytest.approx(2 / 3)  # 1_L and 2_L both clip to 1
    assert evaluate_main(["--pred", str(sub), "--gt", str(labels)]) == 0
    assert "pF1      0.5714" in capsys.readouterr().out


def test_score_submission_names_missing_and_bad_rows(tmp_path: Path) -> None:
    labels = _write(tmp_path / "labels.csv", "prediction_id,cancer\n1_L,1\n1_R,0\n")
    with pytest.raises(SubmissionError, match=r"1 breast\(s\) .* no row: 1_R"):
        score_submission(_write(tmp_path / "a.csv", "prediction_id,cancer\n1_L,1\n"), labels)
    with pytest.raises(SubmissionError, match=r"a\.csv:3: cancer 'x' is not a number"):
        score_submission(_write(tmp_path / "a.csv", "prediction_id,cancer\n1_L,1\n1_R,x\n"), labels)
    with pytest.raises(SubmissionError, match="prediction_id 1_L repeated"):
        score_submission(_write(tmp_path / "a.csv", "prediction_id,cancer\n1_L,1\n1_L,0\n"), labels)
    with pytest.raises(SubmissionError, match="missing column"):
        score_submission(_write(tmp_path / "a.csv", "id,cancer\n1_L,1\n"), labels)
