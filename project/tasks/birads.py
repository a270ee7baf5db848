"""The BI-RADS classifier's task ('cla'): one class per image (or a coarse set of them), the cla score, cla_pre.csv."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from torch import nn

from project.config import comma_floats
from project.data.classes import first_malignant_class
from project.data.layout import Sample, Scan, load_split
from project.data.samplers import OversamplingSampler, class_draw_weights
from project.data.submission import CLA_FILE, write_cla_csv
from project.descriptors import cross_fitted_probabilities, print_skipped
from project.losses import (
    AuxiliaryHeadLoss,
    ClassificationLoss,
    PartialLabelLoss,
    allowed_mask,
    inverse_frequency_weights,
    ordinal_soft_labels,
)
from project.metrics import classification_report
from project.tasks.base import AuxiliaryColumn, BatchTransform, Evaluation, Task, register_task


@register_task
class ClassificationTask(Task):
    """Single-label classification over the dataset's class list; judged by the challenge's cla score.

    Training data may mix fine labels with coarse ones (dataset.yaml `coarse_labels`, e.g. BUS-BRA's
    "4" beside BrEaST's 4A/4B/4C). Such a run is partial-label: targets are masks of the allowed
    classes and the loss scores the summed probability of a coarse label's classes, so the coarse
    images teach everything but the split inside their set.
    """

    name = "cla"
    title = "BI-RADS classifier (MyConvNeXt) on a dataset in the challenge layout"
    default_model = "convnext_tiny"
    default_lr = 4e-4
    partial = False  # set by configure when a training sample carries a coarse label
    taught: dict[Path, torch.Tensor] = {}  # set by configure with --outline-teacher: training targets by image
    lesion_maps = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--p-block", type=float, default=0.05)
        add("--sd-max", type=float, default=0.6)
        add("--p-head", type=float, default=0.5)
        add("--label-smoothing", type=float, default=0.2)
        add("--f1-weight", type=float, default=0.0,
            help="weight of a soft macro-F1 loss added to the cross-entropy (one-vs-rest over the classes, per "
                 "batch), e.g. 0.5; 0 = off")
        add("--ordinal-smoothing", type=float, default=0.0,
            help="SORD soft labels: the target of grade y gives class k a weight proportional to "
                 "exp(-s (k - y)^2) over the listed class order, e.g. 2; 0 = off")
        add("--oversample", action=argparse.BooleanOptionalAction, default=False,
            help="WeightedRandomSampler over classes")
        add("--class-weights", type=comma_floats, default=None,
            help="relative draw rates per class for --oversample, e.g. 1,1,10,5,5,2 (default: equal)")
        add("--balance-by", default=None,
            help="metadata column (e.g. source of a merged dataset): with --oversample each of its values gets an "
                 "equal share of the draws, balanced over its own classes, so the class cannot be told by the source")
        add("--weighted-loss", action=argparse.BooleanOptionalAction, default=False,
            help="inverse-frequency class weights in the loss")
        add("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
        add("--outline-teacher", type=float, default=0.0,
            help="distil the lexicon model of the training images' labelled outlines into their targets: "
                 "(1 - w) x the class + w x the model's probabilities, cross-fitted over five patient-grouped "
                 "splits of the training images (project.descriptors); e.g. 0.5, 0 = off")
        AuxiliaryColumn.add_arguments(parser, "e.g. BUS-BRA's pathology: benign / malignant")

    @classmethod
    def load(cls, root: Path, split: str = "train") -> tuple[Scan, list[str]]:
        scan, config = load_split(root, split, "cla")
        labelled = [s for s in scan.samples if s.label is not None or s.allowed is not None]
        return Scan(labelled, scan.problems), list(config.classes)

    def label_columns(self, sample: Sample) -> dict[str, str]:
        """The class, or a coarse label's classes joined by '|' ('4A|4B|4C')."""
        if sample.label is None:
            return {"label": "|".join(self.labels[i] for i in sample.allowed)}
        return {"label": self.labels[sample.label]}

    def truth_from_columns(self, row: Mapping[str, str]) -> dict:
        names = row["label"].split("|")
        unknown = [name for name in names if name not in self.labels]
        if unknown:
            raise ValueError(f"class {unknown[0]!r} is not one of {self.labels}")
        indices = tuple(self.labels.index(name) for name in names)
        return {"label": indices[0]} if len(indices) == 1 else {"label": None, "allowed": indices}

    def configure(self, args: argparse.Namespace, train: Sequence[Sample]) -> None:
        self.partial = any(s.label is None for s in train)
        if args.balance_by and any(args.balance_by not in s.extra for s in train):
            raise SystemExit(f"{args.data}: --balance-by {args.balance_by!r} is not a metadata column of every image")
        if self.partial and args.mixup > 0:
            raise SystemExit("--mixup cannot mix coarse labels (dataset.yaml coarse_labels); leave it at 0")
        self.aux = AuxiliaryColumn.from_args(args, train)
        for flag, value in (("--f1-weight", args.f1_weight), ("--ordinal-smoothing", args.ordinal_smoothing)):
            if self.partial and value > 0:
                raise SystemExit(f"{flag} needs a fine label for every image (dataset.yaml coarse_labels)")
        if self.aux.classes and (self.partial or args.mixup > 0):
            raise SystemExit("--aux-column works with fine labels and without --mixup")
        if args.outline_teacher > 0 and (self.partial or self.aux.classes or args.mixup > 0):
            raise SystemExit("--outline-teacher works with fine labels, without --aux-column and --mixup")
        teacher = args.outline_teacher
        self.taught = self._outline_taught_targets(train, teacher, args.seed) if teacher > 0 else {}

    def _outline_taught_targets(self, train: Sequence[Sample], weight: float, seed: int) -> dict[Path, torch.Tensor]:
        """Every training image's target: its class mixed with the cross-fitted lexicon model's grade of its
        outline (Lopez-Paz et al., "Unifying distillation and privileged information", ICLR 2016); the class
        alone where the image has no usable mask. Validation images keep their class index."""
        try:
            graded, skipped = cross_fitted_probabilities(train, self.labels, seed=seed)
        except ValueError as exc:
            raise SystemExit(f"--outline-teacher: {exc}; --outline-teacher 0 trains without it") from None
        print_skipped(skipped)
        print(f"outline teacher: {len(graded)} of {len(train)} training images graded by their outline; "
              f"{len(skipped)} without a usable mask keep their class", file=sys.stderr)
        targets = {}
        for sample in train:
            target = np.eye(len(self.labels))[sample.label]
            if sample.path in graded:
                target = (1 - weight) * target + weight * graded[sample.path]
            targets[sample.path] = torch.tensor(target, dtype=torch.float32)
        return targets

    def model_spec(self, args: argparse.Namespace) -> tuple[str, dict]:
        """ConvNeXt names get MyConvNeXt, my_efficientnet the same regularisation on an EfficientNet
        trunk (`--model-kwargs '{"backbone": ...}'`, default tf_efficientnet_lite0); any other name is a
        timm baseline."""
        outputs = len(self.labels) + len(self.aux.classes)
        regularised = {"num_classes": outputs, "p_block": args.p_block, "sd_max": args.sd_max,
                       "p_head": args.p_head}
        if args.model.startswith("convnext"):
            return "my_convnext", {"backbone": args.model, **regularised, **args.model_kwargs}
        if args.model == "my_efficientnet":
            return "my_efficientnet", {**regularised, **args.model_kwargs}
        return args.model, {"num_classes": outputs, **args.model_kwargs}

    def loss(self, args: argparse.Namespace, train: Sequence[Sample]) -> nn.Module:
        labels = [s.label for s in train if s.label is not None]
        class_weights = inverse_frequency_weights(labels, len(self.labels)) if args.weighted_loss else None
        if self.partial:
            return PartialLabelLoss(class_weights=class_weights, label_smoothing=args.label_smoothing)
        soft_labels = ordinal_soft_labels(len(self.labels), args.ordinal_smoothing) if args.ordinal_smoothing else None
        loss = ClassificationLoss(class_weights=class_weights, label_smoothing=args.label_smoothing,
                                  soft_labels=soft_labels, f1_weight=args.f1_weight)
        return AuxiliaryHeadLoss(loss, len(self.labels), args.aux_weight) if self.aux.classes else loss

    def train_sampler(
        self, args: argparse.Namespace, train: Sequence[Sample], rank: int, world_size: int
    ) -> OversamplingSampler | None:
        if not args.oversample:
            return None
        return OversamplingSampler(self._draw_weights(train, args.class_weights, args.balance_by), seed=args.seed,
                                   rank=rank, world_size=world_size)

    def _draw_weights(
        self, train: Sequence[Sample], class_weights: Sequence[float] | None, balance_by: str | None = None
    ) -> np.ndarray:
        """Per-sample draw weights balancing the classes; each coarse label is drawn as one more class.
        With `balance_by`, each value of that metadata column gets an equal share, balanced inside."""
        coarse = sorted({s.allowed for s in train if s.label is None})
        keys = np.asarray([s.label if s.label is not None else len(self.labels) + coarse.index(s.allowed)
                           for s in train])
        rates = None if class_weights is None else [*class_weights, *[1.0] * len(coarse)]
        count = len(self.labels) + len(coarse)
        if not balance_by:
            return class_draw_weights(keys, count, rates)
        sources = np.asarray([s.extra[balance_by] for s in train])
        weights = np.zeros(len(train))
        for source in np.unique(sources):
            members = sources == source
            share = class_draw_weights(keys[members], count, rates)
            weights[members] = share / share.sum()
        return weights

    def batch_transform(self, args: argparse.Namespace) -> BatchTransform | None:
        if args.mixup <= 0:
            return None
        return Mixup(mixup_alpha=args.mixup, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=len(self.labels))

    def target(self, sample: Sample) -> torch.Tensor:
        """The class index (with an auxiliary head, [class, auxiliary class or -1]); with --outline-teacher, a
        training image's class probabilities; in a partial-label run, the mask of the classes the label allows."""
        if self.aux.classes:
            return torch.tensor([sample.label, self.aux.index(sample)])
        if sample.path in self.taught:
            return self.taught[sample.path]
        if not self.partial:
            return torch.tensor(sample.label, dtype=torch.long)
        allowed = (sample.label,) if sample.label is not None else sample.allowed
        return allowed_mask([allowed], len(self.labels))[0]

    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
        """The label that covers most of the image."""
        return other if share > 0.5 else target

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, samples: Sequence[Sample]) -> Evaluation:
        """The cla score over the fine labels; a coarse label counts as right (coarse_accuracy) inside its set;
        an auxiliary head's accuracy (and AUC) beside."""
        extra_metrics = {}
        aux_logits = self.auxiliary_logits(logits)
        if aux_logits is not None:
            extra_metrics = self.aux.metrics(aux_logits, targets[:, 1])
            logits, targets = logits[:, : len(self.labels)], targets[:, 0]
        y_pred = logits.argmax(dim=1).numpy()
        if targets.dim() == 2:
            masks = targets.numpy().astype(bool)
            fine = masks.sum(axis=1) == 1
            if (~fine).any():
                extra_metrics["coarse_accuracy"] = float(masks[~fine][np.arange((~fine).sum()), y_pred[~fine]].mean())
            y_true, y_pred = masks[fine].argmax(axis=1), y_pred[fine]
        else:
            y_true = targets.numpy()
        report = classification_report(y_true, y_pred, self.labels)
        metrics = {"score": report["score"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                   "kappa": report["kappa"] if report["kappa"] is not None else 0.0, **extra_metrics}
        return Evaluation(
            metrics=metrics,
            confusion={"BI-RADS": np.asarray(report["confusion_matrix"])},
            confusion_labels={"BI-RADS": self.labels},
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes' logits (an auxiliary head's, after them, are not read)."""
        return torch.softmax(logits.float()[:, : len(self.labels)], dim=-1)

    def auxiliary_logits(self, logits: torch.Tensor) -> torch.Tensor | None:
        return logits[:, len(self.labels):] if self.aux.classes else None

    def decide(self, probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
        """The most probable class."""
        return probs.argmax(axis=1)

    def probability_columns(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """One column per class, then `malignancy`: P(BI-RADS ≥ 4), where the class list has such classes."""
        columns = super().probability_columns(probs)
        first = first_malignant_class(self.labels)
        if first is not None:
            columns["malignancy"] = probs[:, first:].sum(axis=1)
        return columns

    def write_submission(
        self, out_dir: Path, names: Sequence[str], probs: np.ndarray, thresholds: Mapping[str, float], id_style: str
    ) -> Path:
        path = Path(out_dir) / CLA_FILE
        write_cla_csv(path, dict(zip(names, self.decide(probs, thresholds).tolist())), id_style=id_style)
        return path
