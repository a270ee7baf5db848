"""Negative down-sampling: every positive, the requested fraction of negatives, a new draw each epoch."""

from __future__ import annotations

import numpy as np
import pytest

from project.mammo.sampling import NegativeDownsampler

LABELS = np.array([1] * 20 + [0] * 980)


def _epoch(sampler: NegativeDownsampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_keeps_every_positive_and_the_fraction_of_negatives() -> None:
    sampler = NegativeDownsampler(LABELS, negative_fraction=0.1, seed=3)
    draw = _epoch(sampler, 0)
    assert len(draw) == len(sampler) == 20 + 98
    assert len(set(draw)) == len(draw)
    assert set(range(20)) <= set(draw)
    assert sum(LABELS[i] == 0 for i in draw) == 98


def test_new_negatives_each_epoch_reproducible_from_the_seed() -> None:
    sampler = NegativeDownsampler(LABELS, negative_fraction=0.1, seed=3)
    negatives = [{i for i in _epoch(sampler, epoch) if LABELS[i] == 0} for epoch in range(3)]
    assert negatives[0] != negatives[1] and negatives[1] != negatives[2]
    assert len(negatives[0] & negatives[1]) < 40  # independent draws of 98 from 980 share about 10
    assert _epoch(NegativeDownsampler(LABELS, 0.1, seed=3), 1) == _epoch(sampler, 1)
    assert _epoch(NegativeDownsampler(LABELS, 0.1, seed=4), 1) != _epoch(sampler, 1)


def test_order_is_shuffled() -> None:
    draw = _epoch(NegativeDownsampler(LABELS, 0.1), 0)
    assert draw[:20] != sorted(draw[:20]) and any(LABELS[i] == 0 for i in draw[:20])


def test_ranks_split_one_draw() -> None:
    ranks = [NegativeDownsampler(LABELS, 0.1, seed=1, rank=r, world_size=3) for r in range(3)]
    parts = [_epoch(s, 2) for s in ranks]
    assert [len(p) for p in parts] == [40, 40, 40]  # 118 padded to 120
    whole = NegativeDownsampler(LABELS, 0.1, seed=1)
    whole.set_epoch(2)
    assert set().union(*map(set, parts)) == set(whole)


def test_one_class_only() -> None:
    assert sorted(NegativeDownsampler([1, 1, 1], 0.1)) == [0, 1, 2]
    assert len(list(NegativeDownsampler([0] * 5, 0.1))) == 1  # at least one negative is kept


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        NegativeDownsampler([0, 2])
    with pytest.raises(ValueError, match="negative_fraction"):
        NegativeDownsampler([0, 1], negative_fraction=0.0)
