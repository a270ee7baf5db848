"""Splits: stratified, grouped by patient, official folds respected."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from project.data.layout import Sample
from project.data.splits import kfold_indices, train_val_indices


def _samples(n: int, groups: bool = False, folds: bool = False) -> list[Sample]:
    return [
        Sample(path=Path(f"{i}.png"), label=i % 3, group=f"p{i // 2}" if groups else None,
               fold=(i // 2) % 4 + 1 if folds else None)
        for i in range(n)
    ]


def test_kfold_partitions_and_stratifies() -> None:
    samples = _samples(60)
    folds = kfold_indices(samples, 5, seed=0)
    validation = np.concatenate([val for _, val in folds])
    assert sorted(validation) == list(range(60))
    for train, val in folds:
        assert set(train).isdisjoint(val)
        assert np.bincount([samples[i].label for i in val], minlength=3).tolist() == [4, 4, 4]


def test_groups_never_straddle_a_split() -> None:
    samples = _samples(80, groups=True)
    for train, val in kfold_indices(samples, 4, seed=1):
        assert {samples[i].group for i in train}.isdisjoint({samples[i].group for i in val})


def test_official_folds_are_used_as_given() -> None:
    samples = _samples(40, groups=True, folds=True)
    for number, (_, val) in enumerate(kfold_indices(samples, 4), start=1):
        assert {samples[i].fold for i in val} == {number}


def test_samples_without_a_fold_always_train_beside_official_folds() -> None:
    official = _samples(40, groups=True, folds=True)
    merged = [Sample(path=Path(f"extra{i}.png"), label=None, allowed=(2, 3)) for i in range(10)]
    samples = official + merged
    splits = kfold_indices(samples, 4)
    assert len(splits) == 4
    for number, (train, val) in enumerate(splits, start=1):
        assert {samples[i].fold for i in val} == {number}
        assert set(range(40, 50)) <= set(train.tolist())


def test_train_val_split_fraction_and_determinism() -> None:
    samples = _samples(100)
    train, val = train_val_indices(samples, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    again = train_val_indices(samples, 0.2, seed=3)
    assert np.array_equal(val, again[1])
