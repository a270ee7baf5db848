"""Stratified train/validation splits and k-folds, grouped by patient when groups are known."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from project.data.layout import Sample


def stratification_key(sample: Sample) -> str:
    """Class (or coarse label) for classification samples, the pattern of feature values otherwise."""
    if sample.label is not None:
        return str(sample.label)
    if sample.allowed is not None:
        return "|".join(map(str, sample.allowed))
    return "".join("?" if v is None else str(v) for v in sample.features.values())


def kfold_indices(
    samples: Sequence[Sample], k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index arrays for each of k folds.

    When the samples carry k official fold numbers, those folds are used as they are (fold i
    of the result validates on the i-th smallest fold number); a sample without a fold number
    then always trains (e.g. a second dataset merged in to help the first). Otherwise folds
    are stratified, and grouped by `Sample.group` when any sample has one, so one patient
    never lands on both sides.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    official = sorted({s.fold for s in samples if s.fold is not None})
    if len(official) == k:
        fold_ids = np.asarray([-1 if s.fold is None else s.fold for s in samples])
        return [(np.flatnonzero(fold_ids != f), np.flatnonzero(fold_ids == f)) for f in official]
    keys = [stratification_key(s) for s in samples]
    index = np.zeros(len(samples))
    if any(s.group is not None for s in samples):
        groups = [s.group if s.group is not None else f"__sample{i}" for i, s in enumerate(samples)]
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(index, keys, groups))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(index, keys))


def train_val_indices(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One stratified (and grouped) split holding out about `val_fraction` of the samples."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    k = max(2, round(1 / val_fraction))
    return kfold_indices(samples, k, seed)[0]
