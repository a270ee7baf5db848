"""Tests of the challenge score, classification report, pF1 and threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from project.metrics import (
    best_threshold_pf1,
    challenge_score,
    classification_report,
    classification_score,
    feature_score,
    feature_task_scores,
    probabilistic_f1,
    tune_threshold,
)


def test_classification_score_hand_example() -> None:
    # accuracy 0.75; F1 class 0 = 2/3, class 1 = 4/5
    score = classification_score(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert score == pytest.approx(0.6 * 0.75 + 0.4 * (2 / 3 + 4 / 5) / 2)


def test_classification_score_averages_over_present_classes() -> None:
    # accuracy 0.5; per-class F1 0.5, 1, 0, 0; classes absent from truth and prediction are left out
    y_true, y_pred = np.array([0, 1, 2, 3]), np.array([0, 1, 0, 0])
    assert classification_score(y_true, y_pred) == pytest.approx(0.3 + 0.4 * 1.5 / 4)
    assert classification_score(np.array([0, 5]), np.array([0, 5])) == pytest.approx(1.0)


def test_classification_score_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    macro = f1_score(y_true, y_pred, average="macro")
    expected = 0.6 * np.mean(y_true == y_pred) + 0.4 * macro
    assert classification_score(y_true, y_pred) == pytest.approx(expected)


def test_feature_score_hand_example() -> None:
    # accuracy 0.75; positive F1 = 2*2 / (2*2 + 0 + 1) = 0.8
    assert feature_score(np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])) == pytest.approx(0.77)


def test_feature_score_without_positives_has_zero_f1() -> None:
    assert feature_score(np.zeros(4, int), np.zeros(4, int)) == pytest.approx(0.6)


def test_challenge_score_combines_parts() -> None:
    cla_true, cla_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    fea_true = np.array([[1, 0], [1, 1], [1, 0], [0, 1]])
    fea_pred = np.array([[1, 0], [1, 1], [0, 1], [0, 1]])
    result = challenge_score(cla_true, cla_pred, fea_true, fea_pred, tasks=("a", "b"))
    cla = classification_score(cla_true, cla_pred)
    a = feature_score(fea_true[:, 0], fea_pred[:, 0])
    b = feature_score(fea_true[:, 1], fea_pred[:, 1])
    assert result["cla"] == pytest.approx(cla)
    assert result["a"] == pytest.approx(0.77)
    assert result["b"] == pytest.approx(b)
    assert result["fea"] == pytest.approx((a + b) / 2)
    assert result["overall"] == pytest.approx(0.5 * cla + 0.25 * (a + b))


def test_unknown_feature_labels_are_excluded() -> None:
    fea_true = np.array([[1, -1], [0, -1], [-1, -1], [1, -1]])
    fea_pred = np.array([[1, 1], [0, 0], [1, 1], [0, 1]])
    scores = feature_task_scores(fea_true, fea_pred, tasks=("a", "b"))
    assert scores == {"a": pytest.approx(feature_score(np.array([1, 0, 1]), np.array([1, 0, 0])))}
    flipped = fea_pred.copy()
    flipped[2, 0] = 0
    assert feature_task_scores(fea_true, flipped, tasks=("a", "b")) == scores


def test_feature_task_scores_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="4"):
        feature_task_scores(np.zeros((3, 2), int), np.zeros((3, 2), int))


def test_challenge_score_needs_one_known_feature_label() -> None:
    fea = np.full((2, 4), -1)
    with pytest.raises(ValueError, match="no feature task"):
        challenge_score(np.array([0, 1]), np.array([0, 1]), fea, fea)


def test_classification_report_contents() -> None:
    y_true, y_pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    report = classification_report(y_true, y_pred, ["2", "3", "4A"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert report["per_class"]["4A"] == {
        "precision": 1.0, "recall": pytest.approx(2 / 3), "f1": 0.8, "support": 3
    }
    assert report["per_class"]["3"]["precision"] == 0.5
    expected_kappa = cohen_kappa_score(y_true, y_pred, weights="quadratic")
    assert report["kappa"] == pytest.approx(expected_kappa)
    assert report["score"] == pytest.approx(classification_score(y_true, y_pred))


def test_kappa_is_quadratic_and_undefined_is_none() -> None:
    near = classification_report(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2]), list("abcd"))
    far = classification_report(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0]), list("abcd"))
    assert near["accuracy"] == far["accuracy"]
    assert near["kappa"] > far["kappa"]
    assert classification_report(np.array([1, 1]), np.array([1, 1]), list("ab"))["kappa"] is None


def test_pf1_on_hard_labels_equals_sklearn_f1() -> None:
    rng = np.random.default_rng(1)
    labels, predictions = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert probabilistic_f1(labels, predictions) == pytest.approx(f1_score(labels, predictions))


def test_pf1_soft_hand_example_with_clipping() -> None:
    # clipped to [1, 0.4, 0.2, 0]: pTP 1.4, pFP 0.2 -> P 0.875, R 0.7 -> pF1 7/9
    labels, predictions = np.array([1, 1, 0, 0]), np.array([1.3, 0.4, 0.2, -0.5])
    assert probabilistic_f1(labels, predictions) == pytest.approx(7 / 9)


@pytest.mark.parametrize(
    ("labels", "predictions"), [([0, 0, 0], [0.2, 0.5, 0.9]), ([1, 1, 0], [0.0, 0.0, 0.0])]
)
def test_pf1_undefined_is_zero(labels: list[int], predictions: list[float]) -> None:
    assert probabilistic_f1(np.array(labels), np.array(predictions)) == 0.0


def test_best_threshold_pf1_separates() -> None:
    labels, predictions = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    threshold, pf1 = best_threshold_pf1(labels, predictions)
    assert 0.2 < threshold <= 0.3
    assert pf1 == 1.0


def test_tune_threshold_on_separable_data() -> None:
    y_true, prob = np.array([0, 0, 0, 1, 1]), np.array([0.05, 0.6, 0.65, 0.7, 0.9])
    threshold = tune_threshold(y_true, prob)
    assert 0.65 < threshold <= 0.7
    assert feature_score(y_true, (prob >= threshold).astype(int)) == 1.0


def test_tune_threshold_prefers_half_among_ties() -> None:
    assert tune_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.5


def test_tune_threshold_can_predict_no_positive() -> None:
    # one positive at the lowest probability: predicting none (accuracy 0.75) beats any cut
    y_true, prob = np.array([1, 0, 0, 0]), np.array([0.1, 0.5, 0.7, 1.0])
    threshold = tune_threshold(y_true, prob)
    assert not (prob >= threshold).any()


def test_tune_threshold_with_many_values_beats_half() -> None:
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 2000)
    prob = np.clip(0.15 + 0.3 * y_true + rng.normal(0, 0.15, 2000), 0, 1)
    threshold = tune_threshold(y_true, prob)
    tuned = feature_score(y_true, (prob >= threshold).astype(int))
    assert tuned > feature_score(y_true, (prob >= 0.5).astype(int))
    assert 0.2 < threshold < 0.45
