"""The student's mean token entropy on held-out prompts: what gates the length curriculum.

The entropy-gated length curriculum (``../shared/PAPER.md``, "Decoupling KL and Trajectories";
:mod:`caopd.training.curriculum`) advances the completion budget only while the student's mean
token entropy on held-out prompts stays at or above ``min_entropy``. Here that entropy is

    H̄ = (1 / Σ_i c_i) Σ_i Σ_{t < c_i} H(q(· | x_i, y_i,<t)),   H(q) = −Σ_v q(v) log q(v)  (nats)

over one completion y_i of c_i tokens sampled from the student for each held-out prompt x_i (at
the rollouts' temperature and top-p, at the length in force), with q the student's next-token
distribution at temperature 1 (its raw logits) at every completion position, EOS included: a
token-weighted mean, computed in float32 from one teacher-forced forward per completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def token_entropies(logits: Tensor) -> Tensor:
    """H(softmax(logits)) per position, nats: Tensor[..., V] -> Tensor[...] (float32 or wider)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_q = torch.log_softmax(logits.to(dtype), dim=-1)
    return -(log_q.exp() * log_q).sum(dim=-1)


def mean_token_entropy(logits: Tensor, mask: Tensor) -> float:
    """The mean of :func:`token_entropies` over the positions where ``mask`` is nonzero.

    Args:
        logits: Tensor[..., V]; mask: Tensor[...] (bool or 0/1) of the same leading shape.

    Returns:
        The token-weighted mean entropy in nats; NaN when ``mask`` selects no position (a gate
        fed NaN holds: :func:`caopd.training.curriculum.next_index`).

    Raises:
        ValueError: ``mask`` does not match the logits' positions.
    """
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the logits' positions "
                         f"{tuple(logits.shape[:-1])}")
    keep = mask != 0
    if not keep.any():
        return float("nan")
    return float(token_entropies(logits)[keep].mean())


def completion_entropy(model: Any, prompt_ids: Sequence[Sequence[int]],
                       completion_ids: Sequence[Sequence[int]]) -> tuple[float, int]:
    """``(H̄, n_tokens)`` of the module docstring for given completions: one forward per
    completion (eval mode, no grad; the model's training flag is restored), the logits at the
    positions predicting each completion token. NaN with no completion token."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for prompt, completion in zip(prompt_ids, completion_ids):
                if not completion:
                    continue
                ids = torch.tensor([list(prompt) + list(completion)], dtype=torch.long, device=device)
                logits = model(input_ids=ids, use_cache=False).logits[0]
                start = len(prompt) - 1
                total += float(token_entropies(logits[start : start + len(completion)]).double().sum())
                count += len(completion)
    finally:
        model.train(was_training)
    return (total / count if count else float("nan")), count


def probe_entropy(engine: Any, prompts: Sequence[Any], sampling: Any, seed: int) -> tuple[float, int]:
    """Sample one completion per prompt with ``engine`` (an
    :class:`~caopd.rollouts.hf.HFEngine`, whose ``model`` is the student) and return
    :func:`completion_entropy` of them. ``prompts``: ``(prompt_id, messages)`` pairs;
    ``sampling``: a :class:`~caopd.rollouts.engine.SamplingConfig` with ``n == 1``."""
    records = engine.generate(list(prompts), sampling, seed)
    return completion_entropy(engine.model, [r.prompt_token_ids for r in records],
                              [r.completion_token_ids for r in records])
