"""The screening-mammography task ('mammo'): cancer per image from one channel, judged per breast by pF1 and AUC."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from timm.data import resolve_data_config
from torch import nn

from project.data.layout import NotADataset, Sample, Scan
from project.data.samplers import OversamplingSampler, class_draw_weights
from project.fileio import atomic_write_csv
from project.losses import AuxiliaryHeadLoss
from project.mammo.data import MammoDataset, NotAPreparedFolder, load_prepared, mammo_augment
from project.mammo.metrics import AGGREGATIONS, aggregate, breast_scores
from project.mammo.predict import LABEL, PRIOR_METRIC, TASK
from project.mammo.prepare import parse_size
from project.mammo.preprocess import MammoPreprocess
from project.mammo.sampling import NegativeDownsampler
from project.tasks.base import AuxiliaryColumn, Evaluation, Task, TaskDatasets, register_task

SCORES = ("pf1_binarised", "pf1", "auc")
IMAGE_SUBMISSION_FILE = "cancer_pre.csv"


@dataclass(frozen=True)
class Judging:
    """How validation is scored: per-breast aggregation, F-beta, the metric that selects, the training prior."""

    aggregate: str = "mean"
    beta: float = 1.0
    score: str = "pf1_binarised"
    prior: float = 0.0


class CancerLoss(nn.Module):
    """Binary cross-entropy on the cancer logit (column 0), positives weighted by `pos_weight`."""

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float()[:, 0], targets.float(), pos_weight=weight)


def breast_ids(samples: Sequence[Sample]) -> list[str]:
    return [s.extra["prediction_id"] for s in samples]


def breast_positive_rate(samples: Sequence[Sample]) -> float:
    """The share of breasts (`prediction_id`) with a cancer image."""
    _, labels = aggregate(breast_ids(samples), [s.label for s in samples], "max")
    return float(labels.mean()) if len(labels) else 0.0


def one_channel_normalisation(args: argparse.Namespace, model: nn.Module) -> dict[str, float]:
    """Mean and std for one-channel input: the average of the given (--mean/--std) or the model's pretrained
    per-channel values (what a first convolution summed over RGB expects)."""
    data_config = resolve_data_config({}, model=model)
    return {"mean": float(np.mean(args.mean or data_config["mean"])),
            "std": float(np.mean(args.std or data_config["std"]))}


def mammo_preprocess(args: argparse.Namespace, model: nn.Module) -> MammoPreprocess:
    """The prepared folder's settings, the model input `--size`, and the one-channel normalisation."""
    overrides = {**one_channel_normalisation(args, model), "aggregate": args.aggregate}
    if args.size is not None:
        overrides["size"] = tuple(args.size)
    try:
        return MammoPreprocess.from_prepared(args.data, **overrides)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


@register_task
class MammoTask(Task):
    """Cancer from one-channel mammograms (a prepared folder: ``project.mammo.prepare`` or an adapter).

    One sigmoid logit per image; every epoch keeps all positives and a fresh share of the negatives
    (or oversamples positives). Validation aggregates the images of a breast (mean or max) and
    scores it by probabilistic F1 and AUC; the threshold with the best binarised pF1 and the
    training breasts' cancer rate (``positive_rate``, the prior) go into the checkpoint, which is
    what ``python -m project.mammo.predict`` reads.
    """

    name = TASK
    title = "screening-mammography cancer classifier (one channel, per-breast pF1)"
    default_model = "tf_efficientnet_lite0"
    default_lr = 5e-4

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__(labels)
        self.judging = Judging()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--size", type=parse_size, default=None,
            help="model input HxW, e.g. 512x256 (default: the prepared folder's size; --img-size is not used)")
        add("--negative-fraction", type=float, default=0.1,
            help="negatives kept each epoch, drawn anew (every positive is kept; 1 = all)")
        add("--oversample", action=argparse.BooleanOptionalAction, default=False,
            help="oversample positives instead of down-sampling negatives")
        add("--positive-share", type=float, default=0.5, help="share of positive draws with --oversample")
        add("--pos-weight", type=float, default=1.0, help="weight of the positives in the cross-entropy")
        add("--aggregate", choices=AGGREGATIONS, default="mean", help="a breast's probability from its images'")
        add("--beta", type=float, default=1.0, help="beta of the probabilistic F-beta")
        add("--score", choices=SCORES, default="pf1_binarised",
            help="per-breast metric that selects the best epoch (pf1_binarised: at the tuned threshold)")
        AuxiliaryColumn.add_arguments(parser, "e.g. tissue, density, birads")

    @classmethod
    def load(cls, root: Path, split: str = "train") -> tuple[Scan, list[str]]:
        """The labelled images of a prepared folder (one split: `split` is not used)."""
        try:
            scan = load_prepared(root)
        except NotAPreparedFolder as exc:
            raise NotADataset(str(exc)) from None
        return Scan([s for s in scan.samples if s.label is not None], scan.problems), [LABEL]

    def label_columns(self, sample: Sample) -> dict[str, str]:
        return {LABEL: str(sample.label)}

    def truth_from_columns(self, row: Mapping[str, str]) -> dict:
        return {"label": int(row[LABEL])}

    def configure(self, args: argparse.Namespace, train: Sequence[Sample]) -> None:
        """The judging, and with --aux-column the auxiliary classes: the column's values in the training images."""
        self.judging = Judging(args.aggregate, args.beta, args.score, breast_positive_rate(train))
        self.aux = AuxiliaryColumn.from_args(args, train)

    def datasets(
        self, args: argparse.Namespace, train: Sequence[Sample], val: Sequence[Sample], model: nn.Module
    ) -> TaskDatasets:
        pre = mammo_preprocess(args, model)
        augment = mammo_augment(args.augment_options, args.seed) if args.augment else None
        return TaskDatasets(MammoDataset(train, pre, self.target, augment), MammoDataset(val, pre, self.target),
                            pre.to_dict())

    def model_spec(self, args: argparse.Namespace) -> tuple[str, dict]:
        """A timm model with one input channel and one logit (then the auxiliary head's), or 'whole_image'
        (one channel by default)."""
        channels = {} if args.model == "whole_image" else {"in_chans": 1}
        return args.model, {**channels, "num_classes": 1 + len(self.aux.classes), **args.model_kwargs}

    def loss(self, args: argparse.Namespace, train: Sequence[Sample]) -> nn.Module:
        loss = CancerLoss(args.pos_weight)
        return AuxiliaryHeadLoss(loss, 1, args.aux_weight) if self.aux.classes else loss

    def train_sampler(
        self, args: argparse.Namespace, train: Sequence[Sample], rank: int, world_size: int
    ) -> NegativeDownsampler | OversamplingSampler:
        labels = [s.label for s in train]
        if args.oversample:
            weights = class_draw_weights(labels, 2, [1 - args.positive_share, args.positive_share])
            return OversamplingSampler(weights, seed=args.seed, rank=rank, world_size=world_size)
        return NegativeDownsampler(labels, args.negative_fraction, args.seed, rank, world_size)

    def target(self, sample: Sample) -> torch.Tensor:
        """The cancer label; with an auxiliary head, [cancer, auxiliary class index or -1]."""
        if not self.aux.classes:
            return torch.tensor(float(sample.label))
        return torch.tensor([float(sample.label), float(self.aux.index(sample))])

    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
        """Cancer mixed by area; an auxiliary class is the one of the image that covers most."""
        mixed = (1 - share) * target + share * other
        if target.ndim == 1:
            mixed[1:] = other[1:] if share > 0.5 else target[1:]
        return mixed

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, samples: Sequence[Sample]) -> Evaluation:
        """Per-breast pF1, AUC, the tuned threshold and its binarised pF1; `positive_rate` is the training prior."""
        judging = self.judging
        ids = breast_ids(samples)
        aux_metrics = {}
        if targets.ndim == 2:
            aux_metrics = self.aux.metrics(self.auxiliary_logits(logits), targets[:, 1].round().long())
            targets = targets[:, 0]
        _, labels = aggregate(ids, targets.numpy(), "max")
        _, probs = aggregate(ids, self.probabilities(logits)[:, 0].numpy(), judging.aggregate)
        scores = breast_scores(labels, probs, judging.beta)
        chosen = scores[judging.score]
        metrics = {"score": 0.0 if math.isnan(chosen) else chosen,
                   **{k: scores[k] for k in ("pf1", "auc", "pf1_binarised", "threshold", "breasts", "positives")},
                   PRIOR_METRIC: judging.prior, **aux_metrics}
        decided = (probs >= scores["threshold"]).astype(int)
        return Evaluation(
            metrics=metrics,
            confusion={LABEL: confusion_matrix(labels.astype(int), decided, labels=[0, 1])},
            confusion_labels={LABEL: ["0", "1"]},
            thresholds={LABEL: scores["threshold"]},
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float()[:, :1])

    def auxiliary_logits(self, logits: torch.Tensor) -> torch.Tensor | None:
        return logits[:, 1:] if self.aux.classes else None

    def decide(self, probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
        return (probs[:, 0] >= thresholds.get(LABEL, 0.5)).astype(int)

    def write_submission(
        self, out_dir: Path, names: Sequence[str], probs: np.ndarray, thresholds: Mapping[str, float], id_style: str
    ) -> Path:
        """Per image (``image,cancer``); per-breast submissions come from ``python -m project.mammo.predict``."""
        path = Path(out_dir) / IMAGE_SUBMISSION_FILE
        atomic_write_csv(path, ["image", LABEL], zip(names, self.decide(probs, thresholds).tolist()))
        return path
