"""Losses: soft-F1 against scikit-learn, masking of unknown labels, soft targets, class weights, ordinal soft labels,
partial labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from project.losses import (
    ClassificationLoss,
    MultiTaskLoss,
    PartialLabelLoss,
    SoftF1Loss,
    allowed_mask,
    inverse_frequency_weights,
    ordinal_soft_labels,
    soft_f1_loss,
)


@pytest.mark.parametrize("seed", range(6))
def test_soft_f1_on_hard_inputs_is_one_minus_sklearn_f1(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    size = int(torch.randint(5, 40, (1,), generator=generator))
    predictions = torch.randint(0, 2, (size,), generator=generator)
    targets = torch.randint(0, 2, (size,), generator=generator)
    expected = 1 - f1_score(targets.numpy(), predictions.numpy(), zero_division=0)
    loss = SoftF1Loss()(predictions.float(), targets.float())
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("predictions", "targets"),
    [([0, 0, 0], [0, 0, 0]), ([1, 1, 0], [0, 0, 0]), ([0, 0, 0], [1, 0, 1]), ([1, 0], [1, 0])],
)
def test_soft_f1_edge_cases_match_sklearn_with_zero_division_0(
    predictions: list[int], targets: list[int]
) -> None:
    expected = 1 - f1_score(targets, predictions, zero_division=0)
    loss = soft_f1_loss(torch.tensor(predictions).float(), torch.tensor(targets).float())
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_soft_f1_has_gradients_on_soft_inputs() -> None:
    probs = torch.tensor([0.2, 0.7, 0.5, 0.9], requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0])
    soft_f1_loss(probs, targets).backward()
    assert (probs.grad[targets == 1] < 0).all()
    assert (probs.grad[targets == 0] > 0).all()


def test_soft_f1_per_task_with_mask_equals_soft_f1_of_the_known_entries() -> None:
    probs = torch.rand(6, 2)
    targets = torch.randint(0, 2, (6, 2)).float()
    mask = torch.tensor([[1, 1], [0, 1], [1, 0], [1, 1], [0, 1], [1, 1]], dtype=torch.bool)
    per_task = soft_f1_loss(probs, targets, mask, dim=0)
    for task in range(2):
        known = mask[:, task]
        expected = soft_f1_loss(probs[known, task], targets[known, task])
        torch.testing.assert_close(per_task[task], expected)


def _loss_and_grad(
    loss_fn: MultiTaskLoss, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf, targets)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 4, 2, generator=generator)
    targets = torch.randint(0, 2, (8, 4), generator=generator)
    targets[2, 1] = -1
    targets[5, 3] = -1
    return logits, targets


def test_masked_labels_change_neither_loss_nor_gradient(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, targets = batch
    loss_fn = MultiTaskLoss()
    loss, grad = _loss_and_grad(loss_fn, logits, targets)
    assert grad[2, 1].abs().max() == 0 and grad[5, 3].abs().max() == 0
    assert grad.abs().sum() > 0

    other_logits = logits.clone()
    other_logits[2, 1] = torch.tensor([9.0, -9.0])
    other_loss, other_grad = _loss_and_grad(loss_fn, other_logits, targets)
    assert torch.equal(other_loss, loss) and torch.equal(other_grad, grad)

    extra_logits = torch.cat([logits, torch.randn(1, 4, 2)])
    extra_targets = torch.cat([targets, torch.full((1, 4), -1)])
    extra_loss, extra_grad = _loss_and_grad(loss_fn, extra_logits, extra_targets)
    torch.testing.assert_close(extra_loss, loss)
    torch.testing.assert_close(extra_grad[:-1], grad)
    assert extra_grad[-1].abs().max() == 0


def test_nan_float_targets_mean_unknown_like_minus_one(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, targets = batch
    float_targets = targets.float().masked_fill(targets == -1, float("nan"))
    loss_fn = MultiTaskLoss()
    loss, grad = _loss_and_grad(loss_fn, logits, targets)
    float_loss, float_grad = _loss_and_grad(loss_fn, logits, float_targets)
    torch.testing.assert_close(float_loss, loss)
    torch.testing.assert_close(float_grad, grad)


def test_task_without_known_labels_drops_out_of_the_weighted_mean(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, targets = batch
    targets[:, 1] = -1
    full = MultiTaskLoss(task_weights=(1.2, 1.5, 1.0, 1.0))(logits, targets)
    others = [0, 2, 3]
    reduced = MultiTaskLoss(task_weights=(1.2, 1.0, 1.0))(logits[:, others], targets[:, others])
    torch.testing.assert_close(full, reduced)
    losses, present = MultiTaskLoss().task_losses(logits, targets)
    assert present.tolist() == [True, False, True, True]
    assert losses[1] == 0


def test_all_unknown_batch_gives_zero_loss_with_zero_gradient() -> None:
    logits = torch.randn(3, 4, 2)
    loss, grad = _loss_and_grad(MultiTaskLoss(), logits, torch.full((3, 4), -1))
    assert loss.item() == 0
    assert grad.abs().max() == 0


def test_multitask_loss_is_weighted_mean_of_smoothed_ce_and_soft_f1(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, targets = batch
    weights = (1.2, 1.5, 1.0, 1.0)
    loss = MultiTaskLoss(weights, label_smoothing=0.1, f1_weight=0.5)(logits, targets)
    task_losses = []
    for task in range(4):
        known = targets[:, task] != -1
        task_logits, task_targets = logits[known, task], targets[known, task]
        ce = F.cross_entropy(task_logits, task_targets, label_smoothing=0.1)
        f1 = soft_f1_loss(task_logits.softmax(-1)[:, 1], task_targets.float())
        task_losses.append(ce + 0.5 * f1)
    expected = sum(w * t for w, t in zip(weights, task_losses, strict=True)) / sum(weights)
    torch.testing.assert_close(loss, expected)


def test_soft_targets_enter_the_cross_entropy_linearly() -> None:
    logits = torch.randn(6, 4, 2)
    loss_fn = MultiTaskLoss(f1_weight=0.0)
    ones, zeros = torch.ones(6, 4), torch.zeros(6, 4)
    mixed = loss_fn(logits, torch.full((6, 4), 0.3))
    torch.testing.assert_close(mixed, 0.3 * loss_fn(logits, ones) + 0.7 * loss_fn(logits, zeros))


def test_targets_outside_the_conventions_are_rejected() -> None:
    logits = torch.randn(2, 4, 2)
    with pytest.raises(ValueError, match="NaN = unknown"):
        MultiTaskLoss()(logits, torch.full((2, 4), -1.0))
    with pytest.raises(ValueError, match=r"logits \[B, 4, 2\]"):
        MultiTaskLoss()(logits[:, :3], torch.zeros(2, 3, dtype=torch.long))


def test_inverse_frequency_weights_are_balanced_and_zero_for_absent_classes() -> None:
    weights = inverse_frequency_weights([0, 0, 0, 1], num_classes=3)
    torch.testing.assert_close(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))
    with pytest.raises(ValueError, match="beyond num_classes"):
        inverse_frequency_weights([0, 3], num_classes=3)


def test_classification_loss_matches_torch_for_hard_targets_without_weights() -> None:
    logits = torch.randn(5, 6)
    labels = torch.randint(0, 6, (5,))
    expected = F.cross_entropy(logits, labels, label_smoothing=0.2)
    torch.testing.assert_close(ClassificationLoss()(logits, labels), expected)


def test_classification_loss_with_weights_and_mixed_targets() -> None:
    logits = torch.randn(4, 3)
    first, second = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    weights = torch.tensor([0.5, 1.0, 2.0])
    loss_fn = ClassificationLoss(class_weights=weights, label_smoothing=0.2)
    smoothed = F.one_hot(first, 3).float() * 0.8 + 0.2 / 3
    expected = -(weights * smoothed * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss_fn(logits, first), expected)
    mixed = 0.6 * F.one_hot(first, 3).float() + 0.4 * F.one_hot(second, 3).float()
    expected_mixed = 0.6 * loss_fn(logits, first) + 0.4 * loss_fn(logits, second)
    torch.testing.assert_close(loss_fn(logits, mixed), expected_mixed)


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_f1_term_on_confident_logits_is_one_minus_sklearn_macro_f1(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (24,), generator=generator)
    predicted = torch.randint(0, 4, (24,), generator=generator)
    logits = 50.0 * F.one_hot(predicted, 4).float()
    plain = ClassificationLoss(label_smoothing=0.1)(logits, labels)
    with_f1 = ClassificationLoss(label_smoothing=0.1, f1_weight=0.5)(logits, labels)
    macro = f1_score(labels.numpy(), predicted.numpy(), average="macro", labels=range(4), zero_division=0)
    torch.testing.assert_close(with_f1 - plain, torch.tensor(0.5 * (1 - macro)), atol=1e-5, rtol=0)


def test_classification_f1_term_adds_a_push_towards_each_true_class() -> None:
    logits = torch.zeros(6, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ClassificationLoss(label_smoothing=0.0, f1_weight=1.0)(logits, labels).backward()
    ce_only = torch.zeros(6, 3, requires_grad=True)
    ClassificationLoss(label_smoothing=0.0)(ce_only, labels).backward()
    rows = torch.arange(6)
    assert bool((logits.grad[rows, labels] < ce_only.grad[rows, labels]).all())


def test_ordinal_soft_labels_by_hand() -> None:
    rows = ordinal_soft_labels(3, scale=1.0)
    first = torch.tensor([1.0, torch.e ** -1, torch.e ** -4])
    torch.testing.assert_close(rows[0], first / first.sum())
    middle = torch.tensor([torch.e ** -1, 1.0, torch.e ** -1])
    torch.testing.assert_close(rows[1], middle / middle.sum())
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(ordinal_soft_labels(4, scale=0.0), torch.full((4, 4), 0.25))
    torch.testing.assert_close(ordinal_soft_labels(4, scale=50.0), torch.eye(4))


def test_ordinal_loss_is_cross_entropy_against_the_spread_targets() -> None:
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    labels, other = torch.tensor([0, 1, 3, 2]), torch.tensor([3, 1, 0, 2])
    loss_fn = ClassificationLoss(label_smoothing=0.0, soft_labels=ordinal_soft_labels(4, 2.0))
    spread = ordinal_soft_labels(4, 2.0)[labels]
    torch.testing.assert_close(loss_fn(logits, labels), -(spread * logits.log_softmax(-1)).sum(-1).mean())
    assert loss_fn(logits, labels) != ClassificationLoss(label_smoothing=0.0)(logits, labels)
    mixed = 0.7 * F.one_hot(labels, 4).float() + 0.3 * F.one_hot(other, 4).float()
    torch.testing.assert_close(loss_fn(logits, mixed), 0.7 * loss_fn(logits, labels) + 0.3 * loss_fn(logits, other))


COARSE = [(0,), (2, 3, 4), (5,), (2, 3, 4), (1,), (0, 1, 2, 3, 4, 5), (3, 4)]


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(COARSE), 6, generator=torch.Generator().manual_seed(seed)) * 2


def test_allowed_mask_marks_the_allowed_classes() -> None:
    mask = allowed_mask([(1,), (0, 2)], 3)
    assert mask.tolist() == [[False, True, False], [True, False, True]]


def test_partial_label_loss_is_cross_entropy_for_one_class_sets() -> None:
    logits, targets = _logits(), torch.tensor([0, 2, 5, 3, 1, 4, 4])
    mask = allowed_mask([(int(t),) for t in targets], 6)
    torch.testing.assert_close(PartialLabelLoss()(logits, mask), F.cross_entropy(logits, targets))
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0, 3.0])
    expected = ClassificationLoss(weights, label_smoothing=0.2)(logits, targets)
    torch.testing.assert_close(PartialLabelLoss(weights, label_smoothing=0.2)(logits, mask), expected)


def test_partial_label_loss_is_minus_log_of_the_allowed_probability() -> None:
    logits, mask = _logits(1), allowed_mask(COARSE, 6)
    probs = logits.softmax(dim=1)
    expected = -torch.log((probs * mask).sum(dim=1)).mean()
    torch.testing.assert_close(PartialLabelLoss()(logits, mask), expected)
    everything = torch.ones(2, 6, dtype=torch.bool)
    assert float(PartialLabelLoss()(logits[:2], everything)) == pytest.approx(0.0, abs=1e-6)


def test_partial_label_gradient_matches_its_closed_form() -> None:
    # d(-log P_A)/dz_i = p_i - [i in A] p_i / P_A: inside A proportional to p_i, outside p_i.
    logits, mask = _logits(2).requires_grad_(), allowed_mask(COARSE, 6)
    PartialLabelLoss()(logits, mask).backward()
    probs = logits.detach().softmax(dim=1)
    in_set = (probs * mask).sum(dim=1, keepdim=True)
    expected = (probs - mask * probs / in_set) / len(COARSE)
    torch.testing.assert_close(logits.grad, expected)


def test_partial_label_loss_prefers_no_class_inside_the_allowed_set() -> None:
    # Seen from the probabilities, every allowed class gets the same gradient -1/P_A (+1 from the
    # softmax normaliser, which is the same for all K), so moving mass between allowed classes is free.
    probs = _logits(3).softmax(dim=1).requires_grad_()
    mask = allowed_mask(COARSE, 6)
    PartialLabelLoss()(probs.log(), mask).backward()
    in_set = (probs.detach() * mask).sum(dim=1, keepdim=True)
    expected = torch.where(mask, 1 - 1 / in_set, torch.ones_like(in_set)) / len(COARSE)
    torch.testing.assert_close(probs.grad, expected)


def test_moving_probability_inside_the_set_changes_neither_loss_nor_first_order_loss() -> None:
    logits, mask = _logits(4), allowed_mask(COARSE, 6)
    loss = PartialLabelLoss()
    # Exchanging the logits of two allowed classes keeps P_A, hence the loss.
    swapped = logits.clone()
    swapped[1, [2, 4]] = logits[1, [4, 2]]
    swapped[6, [3, 4]] = logits[6, [4, 3]]
    torch.testing.assert_close(loss(swapped, mask), loss(logits, mask))
    # The logit direction that moves probability from class 4 to class 2 of sample 1 (d_i = 1/p_i,
    # d_j = -1/p_j, so dp_2 = -dp_4 and P_A stays) is orthogonal to the gradient.
    probs = logits.softmax(dim=1)
    direction = torch.zeros_like(logits)
    direction[1, 2], direction[1, 4] = 1 / probs[1, 2], -1 / probs[1, 4]
    logits.requires_grad_()
    loss(logits, mask).backward()
    assert float((logits.grad * direction).sum()) == pytest.approx(0.0, abs=1e-6)
    # A uniform soft target over the set would push that direction (towards equal 4A/4B/4C).
    soft = mask.float() / mask.sum(dim=1, keepdim=True)
    uniform_grad = torch.autograd.grad(F.cross_entropy(logits, soft), logits)[0]
    assert abs(float((uniform_grad * direction).sum())) > 1e-3


def test_partial_label_loss_rejects_bad_masks() -> None:
    logits = _logits()
    with pytest.raises(ValueError, match="at least one class"):
        PartialLabelLoss()(logits, torch.zeros_like(logits, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask"):
        PartialLabelLoss()(logits, torch.ones_like(logits))
