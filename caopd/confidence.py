"""Verbal confidence: parse it out of a completion, format it for a rewrite, locate it.

Every response in this pipeline ends with a verbal confidence line, ``Confidence: 0.73``.
Three functions cover everything the pipeline does with it:

- :func:`parse_confidence` reads the confidence a completion states (evaluation, targets);
- :func:`format_confidence` writes ``P_acc`` with two decimals (the rewrite stage);
- :func:`find_confidence_span` locates the LAST label (the one the parser reads), where the
  rewrite replaces a completion's confidence: everything before it is kept, so an earlier
  mention ("I have low confidence: ...", a ``<think>`` block) never cuts the answer away.

The reference parser raised on ``Confidence: 0.75.``, read ``85%`` as 1.0 and could not read
``**Confidence:** 0.85``; this one is tested on a table of formats (``tests/test_confidence.py``).

Label grammar (case-insensitive)::

    label  := [emph] "confidence" [" level" | " score"] [ws* paren] [emph] ws* (":" | "=")
            | "<confidence>"
    emph   := 1-3 of "*" or "_"          (markdown emphasis: **x**, *x*, __x__)
    paren  := "(" ... ")" | "[" ... "]"  (at most 40 characters on one line: the scale, as in
                                          ``Confidence level (0.0-1.0): 0.8``, the instruction's
                                          own wording)
    value  := ws* [emph/quotes] ws* ( decimal | number ws* "%" | number ws* "/" ws* number )

A label must not be glued to a preceding letter, digit or underscore
(``overconfidence:`` and ``my_confidence:`` are not labels) and the word must be followed by ``:`` or ``=`` on the
same line (``I have confidence in this`` is not a label).
"""

from __future__ import annotations

import math
import re
from numbers import Real

__all__ = ["confidence_value_start", "find_confidence_span", "format_confidence", "parse_confidence"]

# The confidence-label grammar, written once: the words of a label and its tag form. Only
# horizontal whitespace is allowed inside a label, so a label never spans lines.
# :data:`caopd.tasks.prompts.CONFIDENCE_LABEL_RE` builds its line-start labels from the same two.
#: 'Confidence', 'confidence level', 'Confidence score', each with an optional range
#: '(0.0-1.0)' or '[0-1]'.
LABEL_WORDS = r"confidence(?:[ \t]+(?:level|score))?(?:[ \t]*(?:\([^()\[\]\n]{0,40}\)|\[[^()\[\]\n]{0,40}\]))?"
#: The tag form: ``<confidence>…</confidence>``.
LABEL_TAG = r"<[ \t]*confidence[ \t]*>"

# A label anywhere in a line: opening emphasis (**, *, __, ***) or none, but not inside a word
# ('overconfidence', 'my_confidence'); optional closing emphasis before the ':' or '='.
_LABEL_RE = re.compile(
    r"(?:(?:(?<![A-Za-z0-9_])[*_]{1,3}|(?<![A-Za-z0-9_</]))"
    + LABEL_WORDS
    + r"[*_]{0,3}[ \t]*[:=]|"
    + LABEL_TAG
    + ")",
    re.IGNORECASE,
)

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

# The value right after a label: optional whitespace/emphasis/quotes, an optional sign (so a
# negative is recognised and rejected rather than skipped), then a number, a percentage or a
# fraction. The final lookahead refuses a number glued to letters or digits ('0.9x', '1e-3')
# or continued as another number ('0,8', '0.8.5'): those are not values we can trust.
_VALUE_RE = re.compile(
    rf"""
    \s*[*_"'`]*\s*
    (?P<sign>[-+]?)
    (?P<num>{_NUMBER})
    (?:
        [ \t]*(?P<pct>%)
    |
        [ \t]*/[ \t]*(?P<den>{_NUMBER})
    )?
    (?![A-Za-z0-9]|[.,/][ \t]*[0-9])
    """,
    re.VERBOSE,
)


def _labels(text: str) -> list[re.Match[str]]:
    """All confidence labels in ``text``, in order of their start index."""
    return list(_LABEL_RE.finditer(text))


def _value_at(text: str, pos: int) -> float | None:
    """The confidence value starting at ``text[pos:]`` (right after a label), or None.

    Conventions: a decimal must lie in [0, 1]; ``N%`` needs 0 <= N <= 100 and gives N/100;
    ``a/b`` needs 0 <= a <= b and b > 0 and gives a/b; any sign '-' gives None.
    """
    match = _VALUE_RE.match(text, pos)
    if match is None or match.group("sign") == "-":
        return None
    number = float(match.group("num"))
    if match.group("pct") is not None:
        return number / 100.0 if number <= 100.0 else None
    denominator_text = match.group("den")
    if denominator_text is not None:
        denominator = float(denominator_text)
        if denominator <= 0.0 or number > denominator:
            return None
        return number / denominator
    return number if number <= 1.0 else None


def _last_label_end(text: str, caller: str) -> int | None:
    """End offset of the LAST confidence label in ``text``, None if there is none; a non-str
    ``text`` is a TypeError that names ``caller``."""
    if not isinstance(text, str):
        raise TypeError(f"{caller} expects a str, got {type(text).__name__}: {text!r}")
    labels = _labels(text)
    return labels[-1].end() if labels else None


# What may sit between a label and its value on the same line (as in _VALUE_RE).
_VALUE_LEAD_RE = re.compile(r"[ \t]*[*_\"'`]*[ \t]*")


def confidence_value_start(text: str) -> int | None:
    """Where the value of the LAST confidence label in ``text`` begins (the label that
    :func:`parse_confidence` reads), past spaces and emphasis; None if there is no label.

    Examples:
        >>> text = "<answer>B</answer>\\nConfidence: 0.75"
        >>> text[confidence_value_start(text):]
        '0.75'
        >>> text = "**Confidence:** 85%"
        >>> text[confidence_value_start(text):]
        '85%'
        >>> confidence_value_start("no label") is None
        True
    """
    end = _last_label_end(text, "confidence_value_start")
    return None if end is None else _VALUE_LEAD_RE.match(text, end).end()


def parse_confidence(text: str) -> float | None:
    """The verbal confidence stated in ``text``, in [0, 1], or None if there is none.

    The LAST label decides (see the module docstring for the label grammar). Its value, after
    optional whitespace and markdown emphasis or quotes, is a decimal in [0, 1], a percentage
    ``N%`` with 0 <= N <= 100 (-> N/100), or a fraction ``a/b`` with 0 <= a <= b, b > 0
    (-> a/b). Text after the value is ignored. If the last label's value is missing or invalid
    (a word, a negative, a bare number above 1, ``101%``, ``5/4``, ``1/0``) the result is None;
    earlier labels are not consulted.

    Examples:
        >>> parse_confidence("<answer>B</answer>\\nConfidence: 0.75.")
        0.75
        >>> parse_confidence("**Confidence:** 85%")
        0.85
        >>> parse_confidence("confidence score = 3/4")
        0.75
        >>> parse_confidence("<CONFIDENCE>.7</CONFIDENCE>")
        0.7
        >>> parse_confidence("Confidence: 0.2\\nConfidence: 0.9 (fairly sure)")
        0.9
        >>> parse_confidence("Confidence: 0.9\\nConfidence: high") is None
        True
        >>> parse_confidence("Confidence: 85") is None
        True
        >>> parse_confidence("I have confidence in this answer.") is None
        True
    """
    end = _last_label_end(text, "parse_confidence")
    return None if end is None else _value_at(text, end)


def format_confidence(p: float) -> str:
    """``p`` as the two-decimal string written into rewrites, exactly ``f"{p:.2f}"``.

    This matches the reference code byte for byte. Python rounds the *binary* value of ``p``
    half-to-even, so exact ties go to the even digit and near-ties follow the binary
    representation. With K=8 rollouts the ties are real: 0.125 -> "0.12", 0.375 -> "0.38",
    0.625 -> "0.62", 0.875 -> "0.88".

    Raises:
        TypeError: ``p`` is not a real number (bools are refused too).
        ValueError: ``p`` is NaN or outside [0, 1].

    Examples:
        >>> format_confidence(0.5)
        '0.50'
        >>> format_confidence(1)
        '1.00'
        >>> format_confidence(5 / 8)
        '0.62'
    """
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"format_confidence expects a real number, got {type(p).__name__}: {p!r}")
    value = float(p)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"confidence must be a number in [0, 1], got {p!r}")
    return f"{value:.2f}"


def find_confidence_span(text: str) -> tuple[int, int] | None:
    """The span ``(start, end)`` of the LAST confidence label in ``text``, or None.

    The last label is the one :func:`parse_confidence` reads. ``start`` is where the label
    begins, including a leading markdown emphasis (``**`` of ``**Confidence:**``); ``end`` is
    just past its ``:``/``=`` (or past ``<confidence>``), so ``text[start:end]`` is the label
    itself and the value follows. Labels are found whatever their value is. The rewrite stage
    keeps ``text[:start]`` (earlier mentions of confidence included) and appends its own
    ``Confidence:`` line.

    Examples:
        >>> text = "<answer>B</answer>\\n**Confidence:** 0.9"
        >>> find_confidence_span(text)
        (19, 32)
        >>> text[19:32]
        '**Confidence:'
        >>> text = "I have low confidence: 47 + 85 = 132(B)\\nConfidence: 0.9"
        >>> text[:find_confidence_span(text)[0]]
        'I have low confidence: 47 + 85 = 132(B)\\n'
        >>> find_confidence_span("no label here") is None
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"find_confidence_span expects a str, got {type(text).__name__}: {text!r}")
    labels = _labels(text)
    if not labels:
        return None
    return labels[-1].start(), labels[-1].end()
