"""Negative down-sampling for screening mammography: every positive, a fresh fraction of the negatives each epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class NegativeDownsampler(Sampler[int]):
    """Each epoch: every positive index plus `negative_fraction` of the negatives drawn anew, shuffled.

    The draw depends only on (seed, epoch), so every DDP rank makes the same one and takes its
    own slice (rank, rank + world_size, ...); the draw is padded by repeating its start so that
    the ranks get equal lengths. Call `set_epoch` each epoch (as with DistributedSampler).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        negative_fraction: float = 0.1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()) - {0, 1})[:5]}")
        if not 0.0 < negative_fraction <= 1.0:
            raise ValueError(f"negative_fraction must be in (0, 1], got {negative_fraction}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        kept = round(negative_fraction * len(self.negatives))
        self.negatives_kept = min(len(self.negatives), max(1, kept)) if len(self.negatives) else 0
        total = len(self.positives) + self.negatives_kept
        self.per_rank = -(-total // world_size)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def epoch_indices(self) -> np.ndarray:
        """This epoch's whole draw (all ranks), shuffled and padded to per_rank · world_size."""
        rng = np.random.default_rng([self.seed, self.epoch])
        negatives = rng.choice(self.negatives, size=self.negatives_kept, replace=False)
        draw = rng.permutation(np.concatenate([self.positives, negatives]))
        return np.resize(draw, self.per_rank * self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.world_size].tolist())
