"""The lesion-feature recogniser's task ('fea'): binary features with unknowns, tuned thresholds, fea_pre.csv."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from project.config import comma_floats
from project.data.layout import Sample, Scan, load_split
from project.data.submission import FEA_FILE, write_fea_csv
from project.losses import FEATURE_TASK_WEIGHTS, MultiTaskLoss
from project.metrics import feature_report, feature_score, tune_threshold
from project.models.densenet import CBAM_KINDS
from project.tasks.base import Evaluation, Task, register_task


@register_task
class FeatureTask(Task):
    """Binary features with unknown labels (NaN); each feature's threshold is tuned on validation.

    The tuned-threshold score selects checkpoints; `score_at_0.5` is logged beside it because
    a threshold tuned on the same images it is scored on is optimistic.
    """

    name = "fea"
    title = "lesion-feature recogniser (MyDenseNet or MyEfficientNetFeatures) on a challenge-layout dataset"
    default_model = "densenet121"
    default_lr = 1e-3
    lesion_maps = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--p-layer", type=float, default=0.03)
        add("--p-head", type=float, default=0.5)
        add("--cbam", choices=CBAM_KINDS, default="residual",
            help="residual: CBAM blended in from zero, so a pretrained trunk starts unchanged; plain: timm's "
                 "CBAM multiplied in; none: no attention (ablation)")
        add("--label-smoothing", type=float, default=0.1)
        add("--task-weights", type=comma_floats, default=None, help="per-feature loss weights (default 1.2,1.5,1,1)")
        add("--f1-weight", type=float, default=0.5, help="weight of the soft-F1 loss")

    @classmethod
    def load(cls, root: Path, split: str = "train") -> tuple[Scan, list[str]]:
        scan, config = load_split(root, split, "fea")
        labelled = [s for s in scan.samples if any(v is not None for v in s.features.values())]
        return Scan(labelled, scan.problems), list(config.tasks)

    def label_columns(self, sample: Sample) -> dict[str, str]:
        values = {feature: sample.features.get(feature) for feature in self.labels}
        return {feature: "" if value is None else str(value) for feature, value in values.items()}

    def truth_from_columns(self, row: Mapping[str, str]) -> dict:
        return {"features": {feature: int(row[feature]) if row[feature] else None for feature in self.labels}}

    def model_spec(self, args: argparse.Namespace) -> tuple[str, dict]:
        """CBAM and task decoupling on a DenseNet (MyDenseNet) or an EfficientNet(-Lite) trunk."""
        kwargs = {"backbone": args.model, "tasks": self.labels, "p_head": args.p_head, "cbam": args.cbam}
        if args.model.startswith("densenet"):
            return "my_densenet", {**kwargs, "p_layer": args.p_layer, **args.model_kwargs}
        if "efficientnet" in args.model:
            return "my_efficientnet_features", {**kwargs, **args.model_kwargs}
        raise SystemExit(
            f"train_binary: --model must be a DenseNet (densenet121, ...) or an EfficientNet "
            f"(tf_efficientnet_lite0, ...), got {args.model!r}"
        )

    def loss(self, args: argparse.Namespace, train: Sequence[Sample]) -> nn.Module:
        default = FEATURE_TASK_WEIGHTS if len(self.labels) == len(FEATURE_TASK_WEIGHTS) else (1.0,) * len(self.labels)
        return MultiTaskLoss(task_weights=args.task_weights or default, label_smoothing=args.label_smoothing,
                             f1_weight=args.f1_weight)

    def target(self, sample: Sample) -> torch.Tensor:
        """One float per feature; NaN where the label is unknown."""
        values = [sample.features.get(feature) for feature in self.labels]
        return torch.tensor([np.nan if v is None else float(v) for v in values], dtype=torch.float32)

    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
        """The area-weighted mix; NaN (unknown) where either is unknown."""
        return (1 - share) * target + share * other

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, samples: Sequence[Sample]) -> Evaluation:
        probs = self.probabilities(logits).numpy()
        targets = targets.numpy()
        metrics, confusion, thresholds, at_half = {}, {}, {}, []
        for index, feature in enumerate(self.labels):
            known = ~np.isnan(targets[:, index])
            if not known.any():
                continue
            y_true = (targets[known, index] >= 0.5).astype(int)
            prob = probs[known, index]
            thresholds[feature] = float(tune_threshold(y_true, prob))
            y_pred = (prob >= thresholds[feature]).astype(int)
            metrics[feature] = feature_report(y_true, y_pred)["score"]
            at_half.append(feature_score(y_true, (prob >= 0.5).astype(int)))
            confusion[feature] = confusion_matrix(y_true, y_pred, labels=[0, 1])
        metrics["score"] = float(np.mean([metrics[f] for f in thresholds])) if thresholds else 0.0
        metrics["score_at_0.5"] = float(np.mean(at_half)) if at_half else 0.0
        return Evaluation(
            metrics=metrics,
            confusion=confusion,
            confusion_labels={feature: ["0", "1"] for feature in confusion},
            thresholds=thresholds,
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, 2] to the probability that each feature is present, [B, T]."""
        return torch.softmax(logits.float(), dim=-1)[..., 1]

    def decide(self, probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
        """1 where the probability reaches the feature's tuned threshold (0.5 where none was tuned)."""
        return (probs >= np.array([thresholds.get(f, 0.5) for f in self.labels])).astype(int)

    def write_submission(
        self, out_dir: Path, names: Sequence[str], probs: np.ndarray, thresholds: Mapping[str, float], id_style: str
    ) -> Path:
        path = Path(out_dir) / FEA_FILE
        write_fea_csv(path, dict(zip(names, self.decide(probs, thresholds).tolist())), self.labels, id_style=id_style)
        return path
