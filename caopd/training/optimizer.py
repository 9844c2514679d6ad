"""The optimizer and the learning-rate schedule of the distill stage.

AdamW as in the reference trainer (TRL / HF ``adamw_torch`` defaults: betas (0.9, 0.999), eps
1e-8; weight decay on matrices only) and a cosine schedule with linear warmup that runs over the
optimizer steps of ALL rounds (``../shared/PAPER.md``: lr 2e-5 cosine, warmup ratio 0.1).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - typing only
    from caopd.training.config import DistillConfig

#: AdamW moments as in the reference trainer (TRL / HF ``adamw_torch`` defaults).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """``ceil(warmup_ratio * total_steps)`` linear-warmup steps."""
    return math.ceil(warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, n_warmup: int) -> float:
    """LR multiplier of the optimizer step with 0-based global index ``step``.

    Linear warmup ``(step + 1) / n_warmup`` (the first step already trains), then cosine decay
    ``0.5 · (1 + cos(π · progress))`` with ``progress = (step − n_warmup) / (total − n_warmup)``
    clamped to [0, 1] (a round with more examples than planned stays at the end of the curve).
    """
    if step < n_warmup:
        return (step + 1) / n_warmup
    progress = min(1.0, (step - n_warmup) / max(1, total_steps - n_warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """:func:`lr_factor` as a ``LambdaLR`` lambda (an object, so its state is saved)."""

    def __init__(self, total_steps: int, n_warmup: int) -> None:
        self.total_steps = total_steps
        self.n_warmup = n_warmup

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.n_warmup)


def build_optimizer(model: nn.Module, cfg: DistillConfig) -> torch.optim.AdamW:
    """AdamW on the fp32 parameters; weight decay on matrices only (not norms or biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """``LambdaLR`` of :class:`WarmupCosine` over ``total_steps`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total_steps, warmup_steps(total_steps, warmup_ratio))
    )
