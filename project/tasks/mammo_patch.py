"""The mammography patch task ('mammo_patch'): background / benign / malignant patches (Shen et al.'s first half)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from project.data.layout import NotADataset, Sample, Scan
from project.data.samplers import OversamplingSampler, class_draw_weights
from project.fileio import atomic_write_csv
from project.losses import ClassificationLoss
from project.mammo.data import MammoDataset, mammo_augment
from project.mammo.patches import PATCH_LABELS, PatchDataError, load_patches, patch_size
from project.mammo.preprocess import MammoPreprocess
from project.metrics import classification_report
from project.tasks.base import Evaluation, Task, TaskDatasets, register_task
from project.tasks.mammo import one_channel_normalisation

PATCH_TASK = "mammo_patch"
PATCH_SUBMISSION_FILE = "patch_pre.csv"
# A patch has no chest-wall side, so it may be mirrored both ways (whole mammograms are only flipped vertically).
PATCH_AUGMENT = {"hflip": 0.5, "vflip": 0.5}


def malignant_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """AUC of P(malignant) for malignant patches against the rest; NaN when one side is empty."""
    positive = y_true == PATCH_LABELS.index("malignant")
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, probs[:, PATCH_LABELS.index("malignant")]))


@register_task
class PatchTask(Task):
    """Three classes of one-channel patches (``python -m project.mammo.patches`` writes them).

    The trained network's trunk becomes the bottom of the whole-image classifier
    (``python -m project.models.whole_image --patch RUN/best.safetensors``). Patches keep their
    image's patient and fold, so the patch classifier of fold k never sees a validation woman of
    the whole-image fold k. Judged by macro-F1; AUC of malignant against the rest beside it.
    """

    name = PATCH_TASK
    title = "mammography patch classifier (background / benign / malignant, one channel)"
    default_model = "tf_efficientnet_lite0"
    default_lr = 5e-4

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--size", type=int, default=None,
            help="model input side in pixels (default: the patches' side; --img-size is not used)")
        add("--label-smoothing", type=float, default=0.1)
        add("--oversample", action=argparse.BooleanOptionalAction, default=False,
            help="draw the three classes equally often")

    @classmethod
    def load(cls, root: Path, split: str = "train") -> tuple[Scan, list[str]]:
        """The patches of a patch folder (one split: `split` is not used)."""
        try:
            return load_patches(root), list(PATCH_LABELS)
        except PatchDataError as exc:
            raise NotADataset(str(exc)) from None

    def label_columns(self, sample: Sample) -> dict[str, str]:
        return {"label": self.labels[sample.label]}

    def truth_from_columns(self, row: Mapping[str, str]) -> dict:
        return {"label": self.labels.index(row["label"])}

    def datasets(
        self, args: argparse.Namespace, train: Sequence[Sample], val: Sequence[Sample], model: nn.Module
    ) -> TaskDatasets:
        side = args.size or patch_size(args.data)
        pre = MammoPreprocess(size=(side, side), **one_channel_normalisation(args, model))
        augment = mammo_augment({**PATCH_AUGMENT, **args.augment_options}, args.seed) if args.augment else None
        return TaskDatasets(MammoDataset(train, pre, self.target, augment), MammoDataset(val, pre, self.target),
                            pre.to_dict())

    def model_spec(self, args: argparse.Namespace) -> tuple[str, dict]:
        return args.model, {"in_chans": 1, "num_classes": len(self.labels), **args.model_kwargs}

    def loss(self, args: argparse.Namespace, train: Sequence[Sample]) -> nn.Module:
        return ClassificationLoss(label_smoothing=args.label_smoothing)

    def train_sampler(
        self, args: argparse.Namespace, train: Sequence[Sample], rank: int, world_size: int
    ) -> OversamplingSampler | None:
        if not args.oversample:
            return None
        weights = class_draw_weights([s.label for s in train], len(self.labels), None)
        return OversamplingSampler(weights, seed=args.seed, rank=rank, world_size=world_size)

    def target(self, sample: Sample) -> torch.Tensor:
        return torch.tensor(sample.label, dtype=torch.long)

    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
        return other if share > 0.5 else target

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, samples: Sequence[Sample]) -> Evaluation:
        y_true, probs = targets.numpy(), self.probabilities(logits).numpy()
        report = classification_report(y_true, probs.argmax(axis=1), self.labels)
        metrics = {"score": report["macro_f1"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                   "auc_malignant": malignant_auc(y_true, probs)}
        return Evaluation(metrics=metrics, confusion={"patch": np.asarray(report["confusion_matrix"])},
                          confusion_labels={"patch": self.labels})

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)

    def decide(self, probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
        return probs.argmax(axis=1)

    def write_submission(
        self, out_dir: Path, names: Sequence[str], probs: np.ndarray, thresholds: Mapping[str, float], id_style: str
    ) -> Path:
        """``image,label``: the most probable class name per patch."""
        path = Path(out_dir) / PATCH_SUBMISSION_FILE
        atomic_write_csv(path, ["image", "label"], [(n, self.labels[i]) for n, i in zip(names, self.decide(probs, {}))])
        return path
