"""Papernot et al.'s black-box attack on the Mind's Eye direct classifier (engine/blackbox.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import blackbox
from engine.errors import Cancelled, ConfigError
from engine.minds_eye import data, weights

SMALL = blackbox.BlackboxConfig(initial=24, substitute_epochs=3, train_epochs=4, n_eval=40, curve_epsilons=(0.2,))


@pytest.fixture(scope="module")
def direct():
    return weights.contenders()["direct"]


@pytest.fixture(scope="module")
def small():
    return blackbox.run_blackbox(SMALL, use_cache=False)


def test_the_oracle_counts_queries_and_answers_only_labels(direct):
    oracle = blackbox.Oracle(direct)
    batch = data.make_batch("test", range(8), 0)
    said = oracle(batch.image)
    assert said.dtype == torch.int64 and said.shape == (8,) and not said.requires_grad
    assert set(said.tolist()) <= set(range(4))
    assert oracle.queries == 8
    oracle(batch.image[:3], batch_size=2)
    assert oracle.queries == 11
    # Nothing but the call and the count: no network, no scores, no room to attach any.
    assert [name for name in dir(oracle) if not name.startswith("__")] == ["_answer", "queries"]
    assert not hasattr(oracle, "__dict__")
    with pytest.raises(AttributeError):
        oracle.net = direct
    with pytest.raises(ConfigError):
        oracle(torch.zeros(2, 3, 64, 64))


def test_queries_are_the_points_labelled_once_each(small):
    assert small.set_sizes == (24, 48, 96)  # Jacobian augmentation doubles S every substitute epoch
    labelled = small.set_sizes[0] + sum(b - a for a, b in zip(small.set_sizes, small.set_sizes[1:]))
    assert small.queries == labelled == small.set_sizes[-1]
    assert small.evaluation_queries > 0  # measuring is counted apart from the attack


def test_new_points_are_lambda_away_from_their_parents():
    substitute = blackbox.make_substitute(0)
    x = data.make_batch("train", range(6), 1).image
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    new = blackbox.jacobian_augment(substitute, x, labels, 0.1, clip=False)
    moved = (new - x).abs()
    assert moved.flatten(1).amax(1).tolist() == pytest.approx([0.1] * 6, abs=1e-6)
    assert torch.all((moved < 1e-6) | ((moved - 0.1).abs() < 1e-6))  # each value: lambda or not at all
    # the direction is the sign of d F_label / dx, so a small step that way raises the label's output
    with torch.no_grad():
        before = torch.log_softmax(substitute(x), 1).gather(1, labels[:, None])
        after = torch.log_softmax(substitute(x + 1e-3 * blackbox.jacobian_sign(substitute, x, labels)), 1)
    assert (after.gather(1, labels[:, None]) > before).all()
    clipped = blackbox.jacobian_augment(substitute, x, labels, 0.1)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert blackbox.step_size(0.1, 4, 3) == -0.1 and blackbox.step_size(0.1, 4, 0) == 0.1


def test_the_substitute_learns_the_oracle(small):
    assert small.oracle_accuracy > 0.9
    assert small.substitute_agreement > 0.4  # 4 classes, a quarter each: chance is 0.25
    assert len(small.eval_agreement) == 3


def test_transfer_rate_is_a_hand_count(small, direct):
    fresh = blackbox.Oracle(direct)
    said = fresh(torch.as_tensor(small.adversarial, dtype=torch.float32)[:, None] / 255)
    fooled = sum(int(s) != int(t) for s, t in zip(said, small.labels))
    assert small.transfer_rate == pytest.approx(fooled / len(small.labels))
    assert np.array_equal(said.numpy(), small.said)
    # FGSM in whole levels: every value moved by eps levels, or less only where [0, 255] stopped it
    change = np.abs(small.adversarial.astype(int) - small.original.astype(int))
    assert change.max() == small.epsilon_levels
    at_edge = (small.adversarial == 0) | (small.adversarial == 255)
    assert np.all((change == small.epsilon_levels) | at_edge)
    assert small.curve_epsilons == (0.1, 0.2) and small.curve_transfer[0] == small.transfer_rate
    assert 0 <= small.random_rate <= 1 and 0 <= small.whitebox_rate <= 1


def test_seeded_cached_and_cancellable(small):
    again = blackbox.run_blackbox(SMALL, use_cache=False)  # a second run from scratch: the same numbers
    assert again.queries == small.queries and again.eval_agreement == small.eval_agreement
    assert again.transfer_rate == small.transfer_rate and np.array_equal(again.adversarial, small.adversarial)
    stored = blackbox.run_blackbox(SMALL, progress=lambda f, m: False)  # read from disk: no step to cancel
    assert stored.seconds == again.seconds and np.array_equal(stored.curve_transfer, again.curve_transfer)
    with pytest.raises(Cancelled):
        blackbox.run_blackbox(blackbox.BlackboxConfig(initial=8, substitute_epochs=1, n_eval=8),
                              progress=lambda f, m: False)
    with pytest.raises(ConfigError):
        blackbox.BlackboxConfig(target="triple").check()
