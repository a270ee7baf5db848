"""The two ultrasound tasks as the engine sees them: BI-RADS classes and binary lesion features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from project.engine import Evaluation
from project.metrics import classification_report, feature_report, feature_score, tune_threshold


class ClassificationTask:
    """Single-label classification over a class list; judged by the challenge's cla score."""

    kind = "cla"

    def __init__(self, classes: Sequence[str], criterion: nn.Module) -> None:
        self.labels = list(classes)
        self.criterion = criterion

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor) -> Evaluation:
        y_true = targets.numpy()
        y_pred = logits.argmax(dim=1).numpy()
        report = classification_report(y_true, y_pred, self.labels)
        metrics = {"score": report["score"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                   "kappa": report["kappa"] if report["kappa"] is not None else 0.0}
        return Evaluation(
            metrics=metrics,
            confusion={"BI-RADS": np.asarray(report["confusion_matrix"])},
            confusion_labels={"BI-RADS": self.labels},
        )


class FeatureTask:
    """Binary features with unknown labels (NaN); each task's threshold is tuned on validation.

    The tuned-threshold score selects checkpoints; `score_at_0.5` is logged beside it because
    a threshold tuned on the same images it is scored on is optimistic.
    """

    kind = "fea"

    def __init__(self, tasks: Sequence[str], criterion: nn.Module) -> None:
        self.labels = list(tasks)
        self.criterion = criterion

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor) -> Evaluation:
        probs = torch.softmax(logits.float(), dim=-1)[..., 1].numpy()
        targets = targets.numpy()
        metrics, confusion, thresholds, at_half = {}, {}, {}, []
        for index, task in enumerate(self.labels):
            known = ~np.isnan(targets[:, index])
            if not known.any():
                continue
            y_true = (targets[known, index] >= 0.5).astype(int)
            prob = probs[known, index]
            thresholds[task] = float(tune_threshold(y_true, prob))
            y_pred = (prob >= thresholds[task]).astype(int)
            metrics[task] = feature_report(y_true, y_pred)["score"]
            at_half.append(feature_score(y_true, (prob >= 0.5).astype(int)))
            confusion[task] = confusion_matrix(y_true, y_pred, labels=[0, 1])
        metrics["score"] = float(np.mean([metrics[t] for t in thresholds])) if thresholds else 0.0
        metrics["score_at_0.5"] = float(np.mean(at_half)) if at_half else 0.0
        return Evaluation(
            metrics=metrics,
            confusion=confusion,
            confusion_labels={task: ["0", "1"] for task in confusion},
            thresholds=thresholds,
        )
