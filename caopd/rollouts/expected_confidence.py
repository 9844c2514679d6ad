"""The confidence a model states *in expectation* at its own answer, beside the one it decodes.

Greedy evaluation (the reference's) decodes the stated number digit by digit, taking the most
likely digit each time: a mode-like reading of the model's confidence distribution, not its
mean (:mod:`caopd.diagnostics.arith_greedy_reading`). CaOPD trains that distribution toward ``P_acc``,
a success rate that varies from prompt to prompt; where the targets of similar prompts are
spread out (0.12 for one sum, 0.88 for the next), the greedy reading can sit far from the mean
the model has learned. This module measures the mean: for an answer ending in a
confidence label, the expectation of the two-decimal number ``d.dd`` that could follow it,

    E[c] = P(1) · 1.00 + P(0) · Σ_a P(a | "0.") · (a/10 + Σ_b P(b | "0.a") · b/100)

where ``P(1)``, ``P(0)`` are the model's probabilities of the first digit (renormalised over
``{0, 1}``: ``1`` can only start ``1.00``), ``a`` and ``b`` the tenths and hundredths digits
(each distribution renormalised over ``0``–``9``). It is reported beside the decoded figures
(``metrics.json``: ``expected_confidence``), never in their place.

The enumeration needs a tokenizer that writes each digit and ``.`` as a token of its own (Qwen's
and the embedded tiny model's do); :func:`digit_tokens` checks that and returns None otherwise.

Cost: one forward pass per answer over its prefix (giving the first-digit and tenths
distributions, and a KV cache) and ten single-token passes on that cache (one per tenths digit,
giving the hundredths), at the evaluation batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from caopd.confidence import confidence_value_start


def expected_value(p_first: Tensor, p_tenths: Tensor, p_hundredths: Tensor) -> Tensor:
    """The expected two-decimal confidence from its digit distributions.

    Args:
        p_first: shape ``(N, 2)``, probabilities of the first digit ``0`` and ``1``.
        p_tenths: shape ``(N, 10)``, of the tenths digit after ``"0."``.
        p_hundredths: shape ``(N, 10, 10)``, ``[n, a, b]`` = probability of hundredths digit
            ``b`` after ``"0.a"``.

    Each distribution is renormalised over its last axis (a model puts some mass on tokens
    outside the format). Returns shape ``(N,)``, values in [0, 1]: a first digit of 1 counts as
    1.00, a first digit of 0 as ``0.ab``.
    """
    if p_first.shape[-1] != 2 or p_tenths.shape[-1] != 10 or p_hundredths.shape[-2:] != (10, 10):
        raise ValueError(
            f"expected shapes (N, 2), (N, 10), (N, 10, 10); got {tuple(p_first.shape)}, "
            f"{tuple(p_tenths.shape)}, {tuple(p_hundredths.shape)}"
        )
    first = p_first / p_first.sum(-1, keepdim=True)
    tenths = p_tenths / p_tenths.sum(-1, keepdim=True)
    hundredths = p_hundredths / p_hundredths.sum(-1, keepdim=True)
    digits = torch.arange(10, dtype=tenths.dtype, device=tenths.device)
    after_tenth = digits / 10 + (hundredths * digits).sum(-1) / 100  # (N, 10): E[0.ab | a]
    below_one = (tenths * after_tenth).sum(-1)
    return first[:, 1] * 1.0 + first[:, 0] * below_one


@dataclass(frozen=True)
class DigitTokens:
    """Token ids of the digits ``0``–``9`` (``digits[d]``) and of ``.``."""

    digits: tuple[int, ...]
    dot: int


def digit_tokens(tokenizer: Any) -> DigitTokens | None:
    """The digit and ``.`` token ids, or None if ``tokenizer`` does not write a confidence such
    as ``0.62`` as the four tokens ``0 . 6 2`` (then the expectation is not computed)."""
    ids = []
    for piece in [str(d) for d in range(10)] + ["."]:
        encoded = tokenizer.encode(piece, add_special_tokens=False)
        if len(encoded) != 1:
            return None
        ids.append(int(encoded[0]))
    found = DigitTokens(digits=tuple(ids[:10]), dot=ids[10])
    for value in ("0.62", "1.00", "0.05"):
        expected = [found.digits[int(value[0])], found.dot, found.digits[int(value[2])], found.digits[int(value[3])]]
        if tokenizer.encode(value, add_special_tokens=False) != expected:
            return None
    return found


def value_prefix_length(tokenizer: Any, completion_ids: Sequence[int]) -> int | None:
    """How many tokens of ``completion_ids`` come before the value of its (last) confidence
    label, or None when it has no label or no token boundary falls where the value starts."""
    ids = list(completion_ids)
    text = tokenizer.decode(ids)
    start = confidence_value_start(text)
    if start is None:
        return None
    for n in range(len(ids) + 1):
        decoded = tokenizer.decode(ids[:n])
        if decoded == text[:start]:
            return n
        if len(decoded) > start:
            return None
    return None


@torch.no_grad()
def expected_confidences(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 256,
) -> list[float | None]:
    """E[stated confidence] at each answer (see the module docstring); None where not defined.

    Args:
        model: a causal LM (``transformers``), in eval mode, on its device.
        tokenizer: its tokenizer.
        prompt_ids, completion_ids: ``n`` prompts and the completions generated for them.
        batch_size: answers per forward pass over their prefixes.

    Returns ``n`` values in [0, 1], or ``n`` Nones if the tokenizer fails :func:`digit_tokens`.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    tokens = digit_tokens(tokenizer)
    out: list[float | None] = [None] * len(prompt_ids)
    if tokens is None:
        return out
    rows, prefixes = [], []
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        n = value_prefix_length(tokenizer, completion)
        if n is not None:
            rows.append(i)
            prefixes.append(list(prompt) + list(completion)[:n])
    if not rows:
        return out
    digit_ids = torch.tensor(tokens.digits)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    parts = []
    for b in range(0, len(prefixes), batch_size):
        parts.append(_digit_distributions(model, prefixes[b:b + batch_size], tokens, digit_ids.to(device), pad))
    p_first, p_tenths, p_hundredths = (torch.cat(part) for part in zip(*parts))
    values = expected_value(p_first.double(), p_tenths.double(), p_hundredths.double())
    for i, value in zip(rows, values.tolist()):
        out[i] = float(value)
    return out


def _digit_distributions(model: Any, prefixes: list[list[int]], tokens: DigitTokens, digit_ids: Tensor,
                         pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """The digit distributions of :func:`expected_value` for one batch of answer prefixes.

    One forward pass over ``prefix + "0" "."`` (left-padded, with its KV cache) gives the first
    digit (predicted at the prefix's last position) and the tenths digit (at the ``.``); one
    single-token pass of each of the ten tenths digits on that cache, repeated ten times, gives
    the hundredths: 1 + 10/L sequence-lengths of compute per answer instead of 10.

    Returns ``(N, 2)``, ``(N, 10)``, ``(N, 10, 10)`` probabilities on the CPU (softmax over the
    vocabulary, then the digit columns; renormalised by :func:`expected_value`).
    """
    device = digit_ids.device
    sequences = [p + [tokens.digits[0], tokens.dot] for p in prefixes]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for j, seq in enumerate(sequences):  # left padding: the last positions line up
        ids[j, width - len(seq):] = torch.tensor(seq)
        mask[j, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=3)
    probs = torch.softmax(out.logits[:, -3:].float(), -1)[..., digit_ids]  # (N, 3, 10)
    cache = out.past_key_values
    cache.batch_repeat_interleave(10)  # row n*10 + a continues answer n with tenths digit a
    n = len(sequences)
    tenths = digit_ids.repeat(n).view(n * 10, 1)
    step = model(
        input_ids=tenths,
        attention_mask=torch.cat([mask.repeat_interleave(10, 0), torch.ones_like(tenths)], dim=1),
        position_ids=positions[:, -1:].repeat_interleave(10, 0) + 1,
        use_cache=True, **{_cache_argument(model): cache},
    )
    hundredths = torch.softmax(step.logits[:, -1].float(), -1)[:, digit_ids].view(n, 10, 10)
    return probs[:, 0, :2].cpu(), probs[:, 2, :].cpu(), hundredths.cpu()


def _cache_argument(model: Any) -> str:
    """The name ``forward`` takes a KV cache by: ``cache`` (transformers >= 5.2x), else the
    older ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

