"""The token-level completion rewrite of CaOPD (DESIGN §1 step 3), and the teacher's solution.

The student's completion keeps its sampled token ids up to its LAST confidence label (the one
:func:`caopd.confidence.parse_confidence` reads) and gets ``Confidence: {P_acc:.2f}`` plus EOS:

- :func:`cut_completion_ids` finds where the kept prefix ends, at a token boundary of the sample;
- :func:`rewrite_completion` appends the suffix and, under a length cap, shortens the kept
  prefix (never the suffix or the EOS);
- :func:`solution_text` is the same cut on text, for a verified rollout shown to the teacher.

The kept ids are never decoded and re-encoded (the reference's token drift, DESIGN §2). An
earlier mention of confidence (``I have low confidence: ...``, a ``<think>`` block) lies before
the last label and is kept: the reference cut at the first match and deleted the work and the
answer. :mod:`caopd.rewrite` builds the training examples with these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from caopd.confidence import find_confidence_span, format_confidence

__all__ = [
    "confidence_suffix_ids",
    "cut_completion_ids",
    "rewrite_completion",
    "rewrite_completion_ids",
    "rewrite_completion_kept",
    "solution_text",
]

# What a byte-level decoder shows for an incomplete UTF-8 sequence at the end of a prefix.
_REPLACEMENT_CHAR = "\ufffd"


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """``ids`` as text the way rollout texts are made: special tokens skipped, no space clean-up."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _strip_stop_ids(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """``ids`` without trailing EOS / pad ids (all of them, if padding repeats)."""
    stop = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    kept = [int(i) for i in ids]
    while kept and kept[-1] in stop:
        kept.pop()
    return kept


def _longest_prefix(tokenizer: Any, ids: list[int], target: str) -> int:
    """The largest ``j`` such that ``decode(ids[:j])`` is a prefix of ``target``.

    Precondition: ``decode(ids)`` extends past ``target`` (the label follows it), so ``j <
    len(ids)``. Binary search on "the decoded prefix, an incomplete trailing UTF-8 character
    aside, is no longer a prefix of ``target``", which holds from the token that crosses the cut
    on; then a short step back past prefixes ending inside a multi-byte character. O(log n)
    decodes; the result always satisfies the property, also for an unusual decoder.
    """
    lo, hi = 0, len(ids)  # past(lo) is False, past(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if target.startswith(_decode(tokenizer, ids[:mid]).rstrip(_REPLACEMENT_CHAR)):
            lo = mid
        else:
            hi = mid
    j = lo
    while j > 0 and not target.startswith(_decode(tokenizer, ids[:j])):
        j -= 1
    return j


def _drop_trailing_whitespace_tokens(tokenizer: Any, ids: list[int], j: int) -> int:
    """The new end after dropping tokens at ``ids[:j]``'s end that add only whitespace."""
    while j > 0:
        before, after = _decode(tokenizer, ids[: j - 1]), _decode(tokenizer, ids[:j])
        if after.startswith(before) and not after[len(before) :].strip():
            j -= 1
        else:
            break
    return j


def cut_completion_ids(tokenizer: Any, completion_ids: Sequence[int]) -> list[int]:
    """The sampled ids of a completion up to its LAST confidence label, at the token level.

    Steps: drop trailing EOS / pad ids; decode (special tokens skipped) and find the last label
    with :func:`caopd.confidence.find_confidence_span` (the label the parser reads); keep the
    longest run of leading ids ``ids[:j]`` whose decoding is a prefix of the text before the
    label (so a token straddling the cut, e.g. ``" Conf"`` after ``"B."``, is dropped); then
    drop trailing tokens that add only whitespace. An earlier mention of confidence (``I have
    low confidence: ...``, a ``<think>`` block) lies before the last label and is kept. A
    completion without a label keeps all its ids (minus trailing EOS / pad).

    The returned ids are a prefix of ``completion_ids``: they are never decoded and re-encoded,
    so a non-canonical tokenisation the model sampled survives unchanged.
    """
    ids = _strip_stop_ids(tokenizer, completion_ids)
    text = _decode(tokenizer, ids)
    span = find_confidence_span(text)
    if span is None:
        return ids
    j = _longest_prefix(tokenizer, ids, text[: span[0]])
    j = _drop_trailing_whitespace_tokens(tokenizer, ids, j)
    return ids[:j]


def confidence_suffix_ids(tokenizer: Any, p_acc: float, *, newline: bool = True) -> list[int]:
    """Ids of ``"\\nConfidence: {p_acc:.2f}"`` (without the ``"\\n"`` if ``newline`` is False),
    encoded on their own (no special tokens added)."""
    text = ("\n" if newline else "") + "Confidence: " + format_confidence(p_acc)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _with_suffix(tokenizer: Any, kept: list[int], p_acc: float) -> list[int]:
    """``kept`` + the confidence suffix (its ``"\\n"`` only where the kept text needs one) + EOS."""
    kept_text = _decode(tokenizer, kept)
    newline = bool(kept_text) and not kept_text.endswith("\n")
    return kept + confidence_suffix_ids(tokenizer, p_acc, newline=newline) + [int(tokenizer.eos_token_id)]


def rewrite_completion(
    tokenizer: Any, completion_ids: Sequence[int], p_acc: float, max_length: int | None = None
) -> tuple[list[int], bool]:
    """The CaOPD completion and whether its kept prefix was shortened to fit ``max_length``.

    The completion is :func:`cut_completion_ids` (sampled ids, never re-encoded) +
    ``"\\nConfidence: {p_acc:.2f}"`` ids + ``[eos]``. The suffix is encoded on its own, so the
    boundary between the kept prefix and the suffix's ``"\\n"`` is a fresh token boundary by
    construction. The suffix leaves out its ``"\\n"`` when the kept text is empty or already
    ends with a newline: a tokenizer whose tokens absorb a newline after punctuation (Qwen2's
    ``">\\n"``) keeps that token, and the label must still start its own line once. So the
    rewritten text is always the kept text, one line break, ``Confidence: x``. A completion with
    no label (e.g. cut by ``max_new_tokens``) keeps all its ids and still gets the suffix.

    With ``max_length`` the result has at most that many ids: the kept prefix is shortened
    (its last ids dropped), never the suffix or the EOS, so a length-capped example still ends
    ``Confidence: x`` + EOS (issue 13 row 9: cutting the assembled ids lost the EOS).

    Returns:
        ``(ids, shortened)``: ``len(ids) <= max_length`` when it is given; ``shortened`` is True
        when prefix ids were dropped to fit.

    Raises:
        ValueError: ``p_acc`` outside [0, 1] or NaN; the tokenizer has no EOS token;
            ``max_length`` cannot hold the suffix and EOS even with an empty prefix.
    """
    return rewrite_completion_kept(tokenizer, completion_ids, p_acc, max_length)[:2]


def rewrite_completion_kept(
    tokenizer: Any, completion_ids: Sequence[int], p_acc: float, max_length: int | None = None
) -> tuple[list[int], bool, int]:
    """:func:`rewrite_completion` and the length of the kept prefix: ``(ids, shortened, n)``
    where ``ids[:n]`` are the student's sampled ids and ``ids[n:]`` the suffix and EOS the
    rewrite wrote (what the sampled-token estimators tell apart, :mod:`caopd.training.estimators`).
    Raises as :func:`rewrite_completion`."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "the tokenizer has no eos_token_id; a rewritten completion must end with EOS"
        )
    kept = cut_completion_ids(tokenizer, completion_ids)
    out = _with_suffix(tokenizer, kept, p_acc)
    if max_length is None or len(out) <= max_length:
        return out, False, len(kept)
    # the suffix is at most one id longer with its newline: start where it fits with one
    j = min(len(kept), max(0, max_length - (len(out) - len(kept))))
    while True:
        out = _with_suffix(tokenizer, kept[:j], p_acc)
        if len(out) <= max_length:
            return out, True, j
        if j == 0:
            raise ValueError(
                f"rewrite.max_completion_length {max_length} cannot hold the confidence suffix and "
                f"EOS ({len(out)} ids): raise it"
            )
        j -= 1


def rewrite_completion_ids(
    tokenizer: Any, completion_ids: Sequence[int], p_acc: float, max_length: int | None = None
) -> list[int]:
    """The CaOPD completion ids of :func:`rewrite_completion` (kept prefix + suffix + EOS)."""
    return rewrite_completion(tokenizer, completion_ids, p_acc, max_length)[0]


def solution_text(rollout_text: str) -> str:
    """A verified rollout as shown to the teacher: cut before its LAST confidence label and
    right-stripped (the same cut as the completion rewrite; an earlier mention is kept)."""
    span = find_confidence_span(rollout_text)
    return (rollout_text if span is None else rollout_text[: span[0]]).rstrip()
