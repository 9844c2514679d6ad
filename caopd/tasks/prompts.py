"""Prompt text: the student confidence instruction, the CaOPD note, the teacher template.

Pure string functions (DESIGN §1, the paper's Appendix C.3). The teacher prompt is the student's
chat prompt with its LAST user turn replaced by one of two templates::

    demo mode                                   correct_solution mode
    {question}                                  {question}

    This is an example for a response to the    Correct solution:
    question:                                   {solution}
    {demonstration}                             Confidence: {c}
    Confidence: {c}
                                                {NOTE}Correctly solve the original question.
    {NOTE}Now answer with a response of your
    own, including the thinking process.

Plain SDFT (``p_acc=None``): ``c = "1.00"`` and no note. CaOPD (``p_acc`` given): ``c`` is
``f"{p_acc:.2f}"`` and ``NOTE`` is :func:`note` followed by a blank line, so the note sits
immediately before the closing instruction. System turns (and any earlier turns) are kept as
they are: the rewrite touches only the last user turn, where the question, the demonstration and
the note live (the reference's science rewrite dropped them; DESIGN §2).
"""

from __future__ import annotations

import re
from typing import Literal

from caopd.confidence import LABEL_TAG, LABEL_WORDS
from caopd.tasks.base import TaskExample

CONFIDENCE_INSTRUCTION = (
    "Confidence: your confidence level (0.0-1.0) regarding the success of this action, "
    "must be in numerical format, no other words or explanation."
)

DEMO_CLOSING = "Now answer with a response of your own, including the thinking process."
SOLUTION_CLOSING = "Correctly solve the original question."

# A confidence label at the start of a line: ``Confidence:``, ``confidence :``,
# ``**Confidence:**``, ``**Confidence**:``, ``- Confidence level:``, ``### Confidence score =``,
# ``Confidence level (0.0-1.0):``, ``<confidence>``. Leading whitespace, list/quote/heading
# markers and markdown emphasis may come before the word. The same label forms as
# :mod:`caopd.confidence`, but only at a line start: a demonstration is free text, where
# "... with high confidence: ..." mid-line is prose.
CONFIDENCE_LABEL_RE = re.compile(
    r"^[ \t>#*_\-]*(?:" + LABEL_WORDS + r"[ \t*_]*[:=]|" + LABEL_TAG + ")",
    re.IGNORECASE | re.MULTILINE,
)


def with_confidence_instruction(user_text: str) -> str:
    """``user_text`` with the confidence instruction appended after a blank line.

    Idempotent: text that already contains :data:`CONFIDENCE_INSTRUCTION` verbatim is returned
    unchanged.
    """
    if CONFIDENCE_INSTRUCTION in user_text:
        return user_text
    return f"{user_text}\n\n{CONFIDENCE_INSTRUCTION}"


def _check_p_acc(p_acc: float) -> None:
    if not 0.0 <= p_acc <= 1.0:  # also rejects NaN
        raise ValueError(f"p_acc must be in [0, 1], got {p_acc!r}")


def note(p_acc: float) -> str:
    """The CaOPD note shown to the teacher, ``p_acc`` written with two decimals."""
    _check_p_acc(p_acc)
    return (
        f"Note: The empirical confidence for this question is {p_acc:.2f}. "
        "Output this exact value in the 'Confidence:' field."
    )


def strip_confidence(text: str) -> str:
    """``text`` cut before its LAST confidence label (see :data:`CONFIDENCE_LABEL_RE`).

    The line that starts with the last label and everything after it are removed, and trailing
    whitespace is trimmed: the confidence a reader takes from the text is replaced, while an
    earlier line that mentions confidence (in the reasoning, a ``<think>`` block) is kept, as the
    completion rewrite keeps it (DESIGN §1). Text without a label is only right-stripped. A label
    in the middle of a line (``... Confidence: 0.9``) is not a label: the teacher template and
    the task formats put the confidence on its own line.

    Tasks apply it once, when they load a demonstration; :func:`teacher_messages` shows the
    demonstration as it is (a second cut would remove the earlier mention).
    """
    labels = list(CONFIDENCE_LABEL_RE.finditer(text))
    if labels:
        text = text[: labels[-1].start()]
    return text.rstrip()


def teacher_messages(
    example: TaskExample,
    *,
    mode: Literal["demo", "correct_solution"],
    p_acc: float | None,
    solution: str | None = None,
) -> list[dict[str, str]]:
    """The teacher's chat prompt for ``example``.

    Args:
        example: the prepared row; its ``messages`` are the student prompt and its ``question``
            is the last user turn's content.
        mode: ``"demo"`` shows ``example.demonstration``; ``"correct_solution"`` shows
            ``solution`` (a verified student rollout, or the demonstration as the fallback that
            the caller chose).
        p_acc: the empirical accuracy target; ``None`` means plain SDFT (``Confidence: 1.00``,
            no note).
        solution: required in ``correct_solution`` mode, ignored in ``demo`` mode.

    Returns:
        A new list of new dicts; ``example.messages`` is not modified. Every turn is copied as is
        except the last user turn, whose content becomes the template (module docstring). The
        demonstration and the solution are shown as given, right-stripped: they carry no final
        confidence line (tasks cut demonstrations with :func:`strip_confidence` when they load
        them; the rewrite cuts a solution with :func:`caopd.rewrite.solution_text`), and an
        earlier mention of confidence in them is kept.

    Raises:
        ValueError: unknown mode, missing solution, empty demonstration in demo mode, ``p_acc``
            outside [0, 1], or no user turn in ``example.messages``.
    """
    if p_acc is None:
        confidence, note_block = "1.00", ""
    else:
        _check_p_acc(p_acc)
        confidence, note_block = f"{p_acc:.2f}", note(p_acc) + "\n\n"

    if mode == "demo":
        shown = example.demonstration.rstrip()
        if not shown.strip():
            raise ValueError(
                f"example {example.id!r}: demo mode needs a non-empty demonstration "
                "(eval rows have none)"
            )
        user_turn = (
            f"{example.question}\n\nThis is an example for a response to the question:\n"
            f"{shown}\nConfidence: {confidence}\n\n{note_block}{DEMO_CLOSING}"
        )
    elif mode == "correct_solution":
        if solution is None:
            raise ValueError(f"example {example.id!r}: correct_solution mode needs a solution")
        shown = solution.rstrip()
        if not shown.strip():
            raise ValueError(f"example {example.id!r}: the solution is empty")
        user_turn = (
            f"{example.question}\n\nCorrect solution:\n{shown}\nConfidence: {confidence}\n\n"
            f"{note_block}{SOLUTION_CLOSING}"
        )
    else:
        raise ValueError(f"unknown teacher mode {mode!r}; expected 'demo' or 'correct_solution'")

    messages = [dict(turn) for turn in example.messages]
    user_indices = [i for i, turn in enumerate(messages) if turn.get("role") == "user"]
    if not user_indices:
        raise ValueError(f"example {example.id!r}: its messages have no user turn")
    messages[user_indices[-1]]["content"] = user_turn
    return messages
