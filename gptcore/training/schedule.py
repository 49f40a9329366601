"""The book's learning-rate schedule: linear warmup, then cosine decay (a pure function of the step)."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, *, peak_lr: float, initial_lr: float = 0.0, min_lr: float = 0.0,
                  warmup_steps: int = 0, cosine_decay: bool = True) -> float:
    """LR for optimizer step `step` (0-based) of `total_steps`.

    Warmup: initial_lr + step * (peak_lr - initial_lr) / warmup_steps for step < warmup_steps.
    Decay: eta_t = min_lr + 1/2 (peak_lr - min_lr)(1 + cos(pi t / T)) with t = step - warmup_steps and
    T = total_steps - warmup_steps, as the book's train_model (and nanoGPT) compute it: the first step
    after warmup runs at peak_lr, the last one just above min_lr. Without warmup and decay this is the
    constant peak_lr of the book's train_model_simple.
    """
    if step < warmup_steps:
        increment = (peak_lr - initial_lr) / warmup_steps  # computed first, as the book does: equal floats
        return initial_lr + step * increment
    if not cosine_decay:
        return peak_lr
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
