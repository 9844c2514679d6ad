"""The step plan of an online round (:mod:`caopd.training.online`): prompts per optimizer step,
the steps of a round and of the whole run, the seeded visiting order of the prompts, the refresh
windows and each window's rollout seed. Pure functions of the config and the seed."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from caopd.training.data import epoch_order


def prompts_per_step(batch_size: int, grad_accum: int, k: int) -> int:
    """``batch_size · grad_accum / k``: the prompts whose K rollouts fill one optimizer step.

    Raises:
        ValueError: the step's examples are not a whole number of prompt groups.
    """
    examples = batch_size * grad_accum
    if k < 1 or examples % k:
        raise ValueError(
            f"distill.batch_size × distill.grad_accum = {examples} examples per optimizer step is "
            f"not a multiple of rollouts.k = {k}: an online step trains whole prompt groups"
        )
    return examples // k


def online_steps_in_round(n_prompts: int, per_step: int, epochs: int) -> int:
    """Optimizer steps of an online round: ``epochs · ceil(n_prompts / per_step)``."""
    return epochs * math.ceil(n_prompts / per_step)


def online_total_steps(prompts_per_round: Sequence[int], per_step: int, epochs: int) -> int:
    """The LR schedule's length over all online rounds: Σ :func:`online_steps_in_round`."""
    return sum(online_steps_in_round(n, per_step, epochs) for n in prompts_per_round)


def online_step_plan(n_prompts: int, per_step: int, epochs: int, seed: int) -> list[list[np.ndarray]]:
    """The prompt indices of every step, epoch by epoch.

    Returns:
        ``plan[e][s]``: int64 array of the prompt indices of step ``s`` of epoch ``e`` (each epoch
        a permutation from :func:`~caopd.training.data.epoch_order`, cut every ``per_step``; the
        last step of an epoch may hold fewer).
    """
    plan = []
    for epoch in range(epochs):
        order = epoch_order(n_prompts, seed, epoch)
        plan.append([order[i : i + per_step] for i in range(0, n_prompts, per_step)])
    return plan


def refresh_windows(steps_per_epoch: Sequence[int], refresh_every: int) -> list[int]:
    """The refresh window of every step of the round (``len == sum(steps_per_epoch)``).

    Windows hold ``refresh_every`` consecutive steps and restart at each epoch, so a window
    never samples a prompt twice.
    """
    windows, next_window = [], 0
    for n in steps_per_epoch:
        windows.extend(next_window + s // refresh_every for s in range(n))
        next_window += math.ceil(n / refresh_every)
    return windows


def window_seed(seed: int, round_: int, window: int) -> int:
    """The rollout seed of one refresh window, drawn from the stage seed (31 bits)."""
    digest = hashlib.sha256(f"{seed}:online:{round_}:{window}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)
