"""The one multiple-choice verifier, shared by the ``arith`` and ``science`` tasks.

The answer is the content of the LAST ``<answer>...</answer>`` block of the completion
(tags case-insensitive). Accepted contents, whitespace and newlines around the letter allowed,
letter case-insensitive: ``B``, ``(B)``, ``B)``, ``B.``, so ``<answer>\\nB\\n</answer>`` (the
reference science format) parses as ``B``. A last block holding anything else (``E``, ``B or C``,
the option text) gives no answer, and an earlier block is not consulted: the model's final tag
is its answer. No closed block at all (including a generation cut off inside one) gives no
answer, and no answer is incorrect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

LETTERS = ("A", "B", "C", "D")

# Innermost <answer>...</answer> blocks: the content may not itself open another block.
_BLOCK_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.IGNORECASE | re.DOTALL)
_LETTER_RE = re.compile(r"\s*\(?\s*([A-Da-d])\s*[).]?\s*")


def extract_letter(completion: str) -> str | None:
    """The upper-case letter A-D in the last ``<answer>`` block of ``completion``, or ``None``."""
    blocks = _BLOCK_RE.findall(completion)
    if not blocks:
        return None
    match = _LETTER_RE.fullmatch(blocks[-1])
    return match.group(1).upper() if match else None


def normalise_letter(ground_truth: str) -> str:
    """``ground_truth`` as an upper-case letter A-D; ValueError naming the value otherwise."""
    letter = ground_truth.strip().upper()
    if letter not in LETTERS:
        raise ValueError(f"multiple-choice ground truth must be one of A-D, got {ground_truth!r}")
    return letter


def verify_letter(completion: str, ground_truth: str) -> bool:
    """True when the completion's last ``<answer>`` letter equals ``ground_truth`` (A-D)."""
    expected = normalise_letter(ground_truth)
    return extract_letter(completion) == expected


def canonical_letter(value: Any) -> str:
    """The letter A-D of a multiple-choice ground truth given as ``"B"``, ``{"Answer": "B"}`` or
    the reference evaluation's ``[{"Answer": "B"}]``.

    Raises:
        ValueError: anything else (``"Z"``, a tool call, a number), naming the value.
    """
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping) and "Answer" in value:
        value = value["Answer"]
    if not isinstance(value, str):
        raise ValueError(f"multiple-choice ground truth must be one of A-D, got {value!r}")
    return normalise_letter(value)
