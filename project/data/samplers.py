"""Oversampling: draw classes at requested rates, on one process or split across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def class_draw_weights(labels: Sequence[int], num_classes: int, class_weights: Sequence[float] | None) -> np.ndarray:
    """Per-sample weights so that class c is drawn with probability ∝ class_weights[c].

    With no `class_weights` every class is drawn equally often (inverse class frequency).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    wanted = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    if wanted.shape != (num_classes,):
        raise ValueError(f"need {num_classes} class weights, got {len(wanted)}")
    per_class = np.divide(wanted, counts, out=np.zeros(num_classes), where=counts > 0)
    return per_class[labels]


class OversamplingSampler(Sampler[int]):
    """Weighted sampling with replacement; each rank takes its own slice of one shared draw.

    Call `set_epoch` each epoch (as with DistributedSampler) to get a new draw.
    """

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        total = num_samples if num_samples is not None else len(weights)
        self.per_rank = -(-total // world_size)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True, generator=generator)
        return iter(draw[self.rank :: self.world_size].tolist())
