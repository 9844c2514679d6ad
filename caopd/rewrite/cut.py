"""The token-level cuts of one example: prompts kept from the left, the completion cut to its
limit (CaOPD: rewritten by :func:`caopd.completion.rewrite_completion_kept`, so its
``Confidence:`` suffix and EOS survive; SDFT: the sampled ids cut from the right)."""

from __future__ import annotations

from typing import Any

from caopd.completion import _decode, rewrite_completion_kept
from caopd.confidence import find_confidence_span
from caopd.rewrite.config import RewriteConfig


def _left_truncate(ids: list[int], limit: int) -> tuple[list[int], bool]:
    return (ids[-limit:], True) if len(ids) > limit else (ids, False)


def _right_truncate(ids: list[int], limit: int) -> tuple[list[int], bool]:
    return (ids[:limit], True) if len(ids) > limit else (ids, False)


def example_completion(
    tokenizer: Any, sampled: list[int], p_acc: float, config: RewriteConfig
) -> tuple[list[int], bool, int, bool]:
    """One training completion from the sampled ids (module docstring).

    Returns:
        ``(completion, cut, n_sampled, without_label)``: the completion ids, whether they were
        cut to ``config.max_completion_length``, how many leading ids the student sampled (all
        in SDFT, the kept prefix in CaOPD), and whether a CaOPD completion had no confidence
        label (the suffix was appended; always False in SDFT).
    """
    if not config.calibration:
        completion, cut = _right_truncate(sampled, config.max_completion_length)
        return completion, cut, len(completion), False
    without_label = find_confidence_span(_decode(tokenizer, sampled)) is None
    completion, cut, n_sampled = rewrite_completion_kept(
        tokenizer, sampled, p_acc, config.max_completion_length
    )
    return completion, cut, n_sampled, without_label
