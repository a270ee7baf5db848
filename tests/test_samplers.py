"""Oversampling draws classes at the requested rates, also split across ranks."""

from __future__ import annotations

import numpy as np
import pytest

from project.data.samplers import OversamplingSampler, class_draw_weights

LABELS = np.repeat(np.arange(6), [400, 300, 40, 30, 20, 10])


@pytest.mark.parametrize("wanted", [None, [1, 1, 10, 5, 5, 2]])
def test_classes_are_drawn_at_the_requested_rates(wanted: list[float] | None) -> None:
    weights = class_draw_weights(LABELS, 6, wanted)
    sampler = OversamplingSampler(weights, num_samples=60_000, seed=0)
    drawn = np.bincount(LABELS[list(sampler)], minlength=6) / 60_000
    expected = np.ones(6) / 6 if wanted is None else np.asarray(wanted) / sum(wanted)
    assert np.abs(drawn - expected).max() < 0.01


def test_ranks_split_one_draw_and_epochs_differ() -> None:
    weights = class_draw_weights(LABELS, 6, None)
    ranks = [OversamplingSampler(weights, seed=3, rank=r, world_size=2) for r in (0, 1)]
    first, second = list(ranks[0]), list(ranks[1])
    assert len(first) == len(second) == len(LABELS) // 2
    single = list(OversamplingSampler(weights, num_samples=len(LABELS), seed=3))
    assert single[0::2] == first and single[1::2] == second
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first


def test_wrong_number_of_class_weights_is_an_error() -> None:
    with pytest.raises(ValueError, match="need 6 class weights"):
        class_draw_weights(LABELS, 6, [1, 2])
