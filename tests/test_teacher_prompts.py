"""Teacher prompts: the three CaOPD replacements on every task, SDFT untouched, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from caopd.tasks.arith import generate
from caopd.tasks.base import TaskExample
from caopd.tasks.prompts import (
    CONFIDENCE_INSTRUCTION,
    DEMO_CLOSING,
    SOLUTION_CLOSING,
    note,
    strip_confidence,
    teacher_messages,
    with_confidence_instruction,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = next(
    (p for p in (REPO / "shared/data", REPO.parent / "shared/data") if p.exists()),
    REPO.parent / "shared/data",
)
needs_data = pytest.mark.skipif(not SHARED.exists(), reason=f"no {SHARED}")

NOTE_038 = (
    "Note: The empirical confidence for this question is 0.38. "
    "Output this exact value in the 'Confidence:' field."
)


def _arith() -> TaskExample:
    return generate(1, seed=0, levels=[3])[0]


def _science() -> TaskExample:
    from caopd.tasks.science import load_split

    example = load_split(str(SHARED / "science_eval"), "eval")[0]
    demo = (
        "<reasoning>\nThe ester hydrolyses to the acid.\n</reasoning>\n<answer>\n"
        f"{example.ground_truth}\n</answer>\nConfidence: 1.00"
    )
    # as the loader does with output_text: the demonstration's confidence line is cut once
    return dataclasses.replace(example, demonstration=strip_confidence(demo))


def _tooluse() -> TaskExample:
    from caopd.tasks.tooluse import load_split

    example = load_split(str(SHARED / "tooluse_eval"), "eval")[0]
    demo = (
        "Thought: I need a random image.\nAction: getRandomAxolotlImage\nAction Input: {}\n"
        "**Confidence:** 0.9"
    )
    return dataclasses.replace(example, demonstration=strip_confidence(demo))


TASK_PARAMS = [
    pytest.param(_arith, id="arith"),
    pytest.param(_science, id="science", marks=needs_data),
    pytest.param(_tooluse, id="tooluse", marks=needs_data),
]


def _last_user(messages: list[dict]) -> str:
    return [m for m in messages if m["role"] == "user"][-1]["content"]


def _check_common(example: TaskExample, messages: list[dict]) -> str:
    """Same turns as the student prompt except the last user turn; returns that turn."""
    assert len(messages) == len(example.messages)
    assert [m["role"] for m in messages] == [m["role"] for m in example.messages]
    for theirs, ours in zip(example.messages[:-1], messages[:-1]):
        assert theirs == ours  # system message(s) preserved verbatim
    user = _last_user(messages)
    assert user.startswith(example.question)
    return user


@pytest.mark.parametrize("build", TASK_PARAMS)
def test_sdft_demo_mode(build):
    example = build()
    before = [dict(m) for m in example.messages]
    messages = teacher_messages(example, mode="demo", p_acc=None)
    assert example.messages == before  # the example is not modified
    user = _check_common(example, messages)
    demo = strip_confidence(example.demonstration)
    assert user == (
        f"{example.question}\n\nThis is an example for a response to the question:\n"
        f"{demo}\nConfidence: 1.00\n\n{DEMO_CLOSING}"
    )
    assert "Note:" not in user
    assert user.count("Confidence: 1.00") == 1


@pytest.mark.parametrize("build", TASK_PARAMS)
def test_caopd_demo_mode_three_replacements(build):
    example = build()
    messages = teacher_messages(example, mode="demo", p_acc=0.38)
    user = _check_common(example, messages)
    demo = strip_confidence(example.demonstration)
    # the demonstration's confidence is the target, and no other confidence survives
    assert f"{demo}\nConfidence: 0.38\n\n" in user
    assert "Confidence: 1.00" not in user and "0.9" not in user.split(example.question, 1)[1]
    # the note sits immediately before the closing instruction, which ends the turn
    assert user.endswith(f"{NOTE_038}\n\n{DEMO_CLOSING}")
    assert user.count(NOTE_038) == 1
    # the question, with its confidence instruction, opens the turn
    assert user.startswith(example.question)
    assert user.count(CONFIDENCE_INSTRUCTION) == 1


@pytest.mark.parametrize("build", TASK_PARAMS)
def test_correct_solution_mode_uses_the_solution(build):
    example = build()
    from caopd.completion import solution_text

    solution = solution_text("A verified rollout.\n<answer>B</answer>\nConfidence: 0.99")
    sdft = _last_user(
        teacher_messages(example, mode="correct_solution", p_acc=None, solution=solution)
    )
    assert sdft == (
        f"{example.question}\n\nCorrect solution:\nA verified rollout.\n<answer>B</answer>\n"
        f"Confidence: 1.00\n\n{SOLUTION_CLOSING}"
    )
    caopd = _last_user(
        teacher_messages(example, mode="correct_solution", p_acc=0.38, solution=solution)
    )
    assert caopd == (
        f"{example.question}\n\nCorrect solution:\nA verified rollout.\n<answer>B</answer>\n"
        f"Confidence: 0.38\n\n{NOTE_038}\n\n{SOLUTION_CLOSING}"
    )
    assert strip_confidence(example.demonstration) not in caopd
    assert "0.99" not in caopd


def test_errors():
    example = _arith()
    with pytest.raises(ValueError, match="solution"):
        teacher_messages(example, mode="correct_solution", p_acc=0.5)
    empty = dataclasses.replace(example, demonstration="")
    with pytest.raises(ValueError, match=example.id):
        teacher_messages(empty, mode="demo", p_acc=0.5)
    # a demonstration that is only a confidence line is empty once loaded (strip_confidence)
    only_confidence = dataclasses.replace(example, demonstration=strip_confidence("Confidence: 0.9"))
    with pytest.raises(ValueError, match=example.id):
        teacher_messages(only_confidence, mode="demo", p_acc=None)
    with pytest.raises(ValueError, match="mode"):
        teacher_messages(example, mode="other", p_acc=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="p_acc"):
        teacher_messages(example, mode="demo", p_acc=1.5)
    no_user = dataclasses.replace(example, messages=[{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="user"):
        teacher_messages(no_user, mode="demo", p_acc=None)


def test_only_the_last_user_turn_is_replaced():
    example = TaskExample(
        id="x-0",
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
        ],
        question="second",
        demonstration="demo",
        ground_truth="A",
    )
    messages = teacher_messages(example, mode="demo", p_acc=0.5)
    assert messages[:3] == example.messages[:3]
    assert messages[3]["content"].startswith("second\n\nThis is an example")


def test_note_and_instruction():
    assert note(0.38) == NOTE_038
    assert note(1.0).endswith("is 1.00. Output this exact value in the 'Confidence:' field.")
    with pytest.raises(ValueError):
        note(-0.1)
    once = with_confidence_instruction("Q?")
    assert once == f"Q?\n\n{CONFIDENCE_INSTRUCTION}"
    assert with_confidence_instruction(once) == once


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("answer\nConfidence: 0.9", "answer"),
        ("answer\n**Confidence:** 0.9\nmore", "answer"),
        ("answer\n**Confidence**: 0.9", "answer"),
        ("answer\n  confidence : 85%", "answer"),
        ("answer\nConfidence level: 0.4", "answer"),
        ("answer\nconfidence = 0.4", "answer"),
        ("answer\n<confidence>0.4</confidence>", "answer"),
        ("answer\n\n", "answer"),
        ("I have low confidence: maybe\nanswer", "I have low confidence: maybe\nanswer"),
        ("Confidence: 1.00", ""),
        # only the last label goes: an earlier confidence line (reasoning, <think>) stays
        ("a\nConfidence: 0.1\nb\nConfidence: 0.2", "a\nConfidence: 0.1\nb"),
        ("<think>\nConfidence: low, check\n</think>\nanswer\nConfidence: 0.9",
         "<think>\nConfidence: low, check\n</think>\nanswer"),
        ("answer\nConfidence level (0.0-1.0): 0.8", "answer"),
    ],
)
def test_strip_confidence(text, expected):
    assert strip_confidence(text) == expected
    assert strip_confidence(expected) == expected or "Confidence" in expected


def test_teacher_keeps_an_earlier_mention_of_confidence():
    """Issue 13 row 8, the teacher's side: the demonstration and solution are shown whole."""
    example = _arith()
    thought = "<think>\nConfidence: low, so check: 47 + 85 = 132\n</think>\n<answer>B</answer>"
    shown = dataclasses.replace(example, demonstration=thought)
    user = _last_user(teacher_messages(shown, mode="demo", p_acc=0.38))
    assert f"{thought}\nConfidence: 0.38\n\n" in user
    user = _last_user(teacher_messages(example, mode="correct_solution", p_acc=0.5, solution=thought))
    assert f"Correct solution:\n{thought}\nConfidence: 0.50\n\n" in user
