import math

import pytest

from gptcore.training.schedule import learning_rate

ARGS = dict(total_steps=100, peak_lr=1e-3, initial_lr=1e-5, min_lr=1e-4, warmup_steps=20)


def seed_formula(step):
    """The seed's code (the book's appendix-D train_model): linear warmup increments, then
    progress = (global_step - warmup_steps) / (total_training_steps - warmup_steps)."""
    if step < 20:
        return 1e-5 + step * (1e-3 - 1e-5) / 20
    progress = (step - 20) / (100 - 20)
    return 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))


LAST = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 79 / 80))  # one step short of min_lr


@pytest.mark.parametrize("step,expected", [(0, 1e-5), (20, 1e-3), (60, (1e-3 + 1e-4) / 2), (99, LAST)])
def test_schedule_at_key_steps(step, expected):
    assert learning_rate(step, **ARGS) == pytest.approx(expected, rel=1e-12)


def test_schedule_follows_the_seed_at_every_step():
    for step in range(100):
        assert learning_rate(step, **ARGS) == pytest.approx(seed_formula(step), rel=1e-12)


def test_warmup_is_linear_and_decay_monotonic():
    rates = [learning_rate(step, **ARGS) for step in range(100)]
    increments = [b - a for a, b in zip(rates[:20], rates[1:21])]
    assert max(increments) - min(increments) < 1e-15
    assert all(b <= a for a, b in zip(rates[20:], rates[21:]))


def test_without_warmup_and_decay_it_is_constant():
    assert {learning_rate(s, 50, peak_lr=4e-4, warmup_steps=0, cosine_decay=False) for s in range(50)} == {4e-4}
