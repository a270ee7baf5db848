"""Training losses: cross-entropy (label-smoothed or ordinal, weighted), soft-F1, multi-task, partial labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

UNKNOWN_LABEL = -1
FEATURE_TASK_WEIGHTS: tuple[float, ...] = (1.2, 1.5, 1.0, 1.0)


def soft_f1_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    dim: int | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """1 - soft F1 of positive-class probabilities against targets in [0, 1].

    Soft counts TP = sum p*y, FP = sum p*(1-y), FN = sum (1-p)*y run over `dim` (every element
    when None) and only over entries where `mask` is true; loss = 1 - 2TP / (2TP + FP + FN + eps).
    For hard 0/1 inputs this is 1 - F1, where F1 is 0 when there are neither predicted nor true
    positives (scikit-learn's f1_score with zero_division=0).
    """
    if mask is not None:
        # Zeroing both p and y of a masked entry removes it from every count and every gradient.
        probs = probs * mask
        targets = torch.where(mask, targets, torch.zeros_like(targets))
    true_pos = (probs * targets).sum(dim)
    false_pos = (probs * (1 - targets)).sum(dim)
    false_neg = ((1 - probs) * targets).sum(dim)
    return 1 - 2 * true_pos / (2 * true_pos + false_pos + false_neg + eps)


class SoftF1Loss(nn.Module):
    """Module form of soft_f1_loss over all elements of a batch."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(
        self, probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return soft_f1_loss(probs, targets, mask, eps=self.eps)


def split_known(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 targets with 0 where unknown, known mask) of multi-label targets.

    Integer targets mark unknown with -1; float targets (CutMix-mixed) with NaN, which mixing
    propagates, so a mixed label is unknown whenever one of its parts is.
    """
    known = ~targets.isnan() if targets.is_floating_point() else targets != UNKNOWN_LABEL
    values = torch.where(known, targets, torch.zeros_like(targets)).float()
    if bool(((values < 0) | (values > 1)).any()):
        raise ValueError(
            "multi-label targets must be 0/1 (int, -1 = unknown) or in [0, 1] (float, NaN = unknown)"
        )
    return values, known


class MultiTaskLoss(nn.Module):
    """Per-task label-smoothed cross-entropy plus f1_weight * soft-F1, over known labels only.

    logits: [B, T, 2]. targets: [B, T], int64 0/1 with -1 = unknown, or float in [0, 1] (the
    probability that the feature is present, e.g. CutMix-mixed) with NaN = unknown.
    For a task t with n_t > 0 known labels, L_t = mean over its known samples of the cross-entropy
    against [1 - y, y] + f1_weight * soft_f1_loss of softmax(logits)[..., 1]; the loss is
    sum_t w_t L_t / sum_t w_t over the tasks with n_t > 0, and 0 when no task has a known label.
    Unknown entries are multiplied out and the normaliser counts known labels only, so they
    change neither the loss nor any gradient.
    """

    def __init__(
        self,
        task_weights: Sequence[float] = FEATURE_TASK_WEIGHTS,
        label_smoothing: float = 0.1,
        f1_weight: float = 0.5,
    ):
        super().__init__()
        weights = torch.tensor(task_weights, dtype=torch.float32)
        self.register_buffer("task_weights", weights, persistent=False)
        self.label_smoothing = label_smoothing
        self.f1_weight = f1_weight

    def task_losses(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task losses L_t [T] (0 for a task without known labels) and which tasks have any."""
        num_tasks = len(self.task_weights)
        if logits.shape[1:] != (num_tasks, 2) or targets.shape != logits.shape[:2]:
            raise ValueError(
                f"expected logits [B, {num_tasks}, 2] and targets [B, {num_tasks}], "
                f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        values, known = split_known(targets)
        logits = logits.float()
        target_probs = torch.stack([1 - values, values], dim=-1)
        cross_entropy = F.cross_entropy(
            logits.flatten(0, 1),
            target_probs.flatten(0, 1),
            reduction="none",
            label_smoothing=self.label_smoothing,
        ).view_as(values)
        counts = known.sum(dim=0)
        mean_cross_entropy = (cross_entropy * known).sum(dim=0) / counts.clamp(min=1)
        soft_f1 = soft_f1_loss(logits.softmax(dim=-1)[..., 1], values, known, dim=0)
        present = counts > 0
        return (mean_cross_entropy + self.f1_weight * soft_f1) * present, present

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, present = self.task_losses(logits, targets)
        weights = self.task_weights * present
        return (weights * losses).sum() / weights.sum().clamp(min=1e-12)


def inverse_frequency_weights(labels: Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Balanced class weights n / (K * n_k), scikit-learn's 'balanced'; 0 for an absent class.

    For two classes they stand in the ratio N : P, like the N/(P+N) and P/(P+N) weighting, scaled
    to 1 on balanced data.
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels reach class {len(counts) - 1}, beyond num_classes={num_classes}")
    counts = counts.float()
    weights = counts.sum() / (num_classes * counts)
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


def ordinal_soft_labels(num_classes: int, scale: float) -> torch.Tensor:
    """[K, K] soft-label matrix of SORD (Díaz & Marathe, CVPR 2019): row y is softmax_k(-scale (k - y)^2).

    The classes are taken in their listed order as ranks, so a neighbouring grade keeps more of
    the target than a distant one; scale 0 gives uniform rows, a large scale the one-hot rows.
    """
    ranks = torch.arange(num_classes, dtype=torch.float32)
    return torch.softmax(-scale * (ranks[None, :] - ranks[:, None]) ** 2, dim=1)


class ClassificationLoss(nn.Module):
    """Label-smoothed cross-entropy with optional class weights and ordinal soft labels for BI-RADS.

    targets: class indices [B] or class probabilities [B, K] (CutMix/mixup). Indices become
    one-hot rows, so both kinds are normalised alike: the batch mean of
    sum_k w_k q_k (-log p_k) over the smoothed targets q (torch's index-target mean would
    divide by sum_i w_{y_i} instead). With `soft_labels` ([K, K], e.g. ordinal_soft_labels) the
    targets are first spread by it (q = targets @ soft_labels), which keeps mixed targets linear.
    With `f1_weight` > 0, f1_weight x the batch's soft macro-F1 loss is added: the mean over classes
    of soft_f1_loss of softmax(logits)[:, k] against q[:, k] (unsmoothed, one-vs-rest), the
    differentiable form of the macro-F1 that ranks BI-RADS classifiers.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.2,
        soft_labels: torch.Tensor | None = None,
        f1_weight: float = 0.0,
    ):
        super().__init__()
        weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights, persistent=False)
        self.register_buffer("soft_labels", soft_labels, persistent=False)
        self.label_smoothing = label_smoothing
        self.f1_weight = f1_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not targets.is_floating_point():
            targets = F.one_hot(targets, logits.shape[-1])
        targets = targets.float()
        if self.soft_labels is not None:
            targets = targets @ self.soft_labels
        loss = F.cross_entropy(
            logits.float(),
            targets,
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
        )
        if self.f1_weight > 0:
            loss = loss + self.f1_weight * soft_f1_loss(logits.float().softmax(-1), targets, dim=0).mean()
        return loss


def allowed_mask(allowed: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """[B, K] bool mask from each sample's allowed class indices (a fine label allows one class)."""
    mask = torch.zeros(len(allowed), num_classes, dtype=torch.bool)
    for row, classes in enumerate(allowed):
        mask[row, list(classes)] = True
    return mask


class PartialLabelLoss(nn.Module):
    """Partial-label likelihood: a coarse label scores the summed probability of the classes it allows.

    logits [B, K]; allowed [B, K] bool, each row allowing at least one class. With p = softmax(z)
    and P_A = sum_{k in A} p_k, the loss of a sample is

        (1 - eps) * w_A * (-log P_A) + eps * mean_k w_k (-log p_k),

    w_A the mean class weight over A (all weights 1 without class_weights), averaged over the
    batch. For a one-class A = {y} this is label-smoothed, weighted cross-entropy
    (ClassificationLoss, torch's cross_entropy with class-probability targets). The first term
    depends on P_A alone: d(-log P_A)/dp_i = -1 / P_A for every allowed i, so it never prefers one
    allowed class to another; through the softmax, d(-log P_A)/dz_i = p_i - p_i / P_A inside A and
    p_i outside. The smoothing term, as in cross-entropy, pulls every class towards uniform.
    """

    def __init__(self, class_weights: Sequence[float] | torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights, persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if allowed.shape != logits.shape or allowed.dtype != torch.bool or logits.dim() != 2:
            raise ValueError(f"expected logits [B, K] and a bool mask of the same shape, got "
                             f"{tuple(logits.shape)} and {tuple(allowed.shape)} {allowed.dtype}")
        if not bool(allowed.any(dim=1).all()):
            raise ValueError("every sample must allow at least one class")
        log_probs = logits.float().log_softmax(dim=1)
        nll = -log_probs.masked_fill(~allowed, float("-inf")).logsumexp(dim=1)
        weights = torch.ones_like(log_probs[0]) if self.class_weights is None else self.class_weights
        set_weight = (allowed * weights).sum(dim=1) / allowed.sum(dim=1)
        smoothing = -(log_probs * weights).mean(dim=1)
        return ((1 - self.label_smoothing) * set_weight * nll + self.label_smoothing * smoothing).mean()


class AuxiliaryHeadLoss(nn.Module):
    """The task's loss on its first `outputs` logits and column 0 of the targets, plus `weight` times the
    cross-entropy of an auxiliary head (the logits after them) against the class index in column 1
    (-1: unknown, ignored). Column 0 keeps the targets' dtype: class indices stay indices."""

    def __init__(self, task_loss: nn.Module, outputs: int, weight: float) -> None:
        super().__init__()
        self.task_loss, self.outputs, self.weight = task_loss, outputs, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.task_loss(logits[:, : self.outputs], targets[:, 0])
        aux = targets[:, 1].round().long()
        if self.weight > 0 and bool((aux >= 0).any()):
            loss = loss + self.weight * F.cross_entropy(logits[:, self.outputs :].float(), aux, ignore_index=-1)
        return loss


UNKNOWN_MAP = -1.0  # the value of every cell of a lesion map that is not known


class LesionMapLoss(nn.Module):
    """The task's loss plus `weight` times the binary cross-entropy of a coarse lesion map.

    In training the model (built with `lesion_map`) gives (logits, map logits [B, g, g]) and the
    targets are (task targets, lesion maps [B, s, s] in [0, 1], UNKNOWN_MAP where not known). Each
    map is area-averaged onto the g x g grid, so a cell's target is the share of it the lesion
    covers; images with an unknown map add nothing. Plain logits and targets (validation, where
    the model gives its logits alone) get the task's loss alone.
    """

    def __init__(self, task_loss: nn.Module, weight: float) -> None:
        super().__init__()
        self.task_loss, self.weight = task_loss, weight

    def forward(
        self, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.task_loss(outputs, targets)
        (logits, map_logits), (task_targets, maps) = outputs, targets
        loss = self.task_loss(logits, task_targets)
        known = maps.flatten(1)[:, 0] != UNKNOWN_MAP
        if not bool(known.any()):
            return loss
        cover = F.adaptive_avg_pool2d(maps[known].unsqueeze(1).float(), map_logits.shape[-2:]).squeeze(1)
        return loss + self.weight * F.binary_cross_entropy_with_logits(map_logits[known].float(), cover)
