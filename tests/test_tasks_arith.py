"""The arith task: deterministic generation, disjoint splits, well-formed options, its verifier."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from caopd.tasks import arith, get_task
from caopd.tasks.arith import (
    FAR_DELTAS,
    FAR_DISTRACTORS,
    LEVELS,
    NEAR_DELTAS,
    ArithTask,
    generate,
    response,
)
from caopd.tasks.mcq import LETTERS
from caopd.tasks.prompts import CONFIDENCE_INSTRUCTION

ALL_LEVELS = [1, 2, 3, 4, 5]


def _options() -> dict:
    return {
        "name": "arith",
        "sizes": {"train": 300, "val": 50, "eval": 100},
        "arith": {"levels": ALL_LEVELS, "level_weights": None, "eval_seed": 0},
        "paths": {"train": None, "val": None, "eval": None},
    }


def test_same_seed_gives_identical_examples():
    first = generate(50, seed=7, levels=ALL_LEVELS)
    second = generate(50, seed=7, levels=ALL_LEVELS)
    assert [e.to_row() for e in first] == [e.to_row() for e in second]


def test_different_seeds_differ():
    first = generate(50, seed=7, levels=ALL_LEVELS)
    second = generate(50, seed=8, levels=ALL_LEVELS)
    assert [e.question for e in first] != [e.question for e in second]


def test_ids_and_uniqueness_within_split():
    examples = generate(200, seed=1, levels=[1], split="val")
    assert [e.id for e in examples] == [f"arith-val-{i:06d}" for i in range(200)]
    assert len({e.question for e in examples}) == 200


def test_splits_are_disjoint_and_deterministic():
    task = ArithTask()
    splits = task.load_splits(_options(), seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 50, "eval": 100}
    questions = {k: {e.question for e in v} for k, v in splits.items()}
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["eval"]
    assert not questions["val"] & questions["eval"]
    again = task.load_splits(_options(), seed=3)
    assert [e.to_row() for e in again["train"]] == [e.to_row() for e in splits["train"]]


def test_eval_split_does_not_depend_on_train_size():
    options = _options()
    bigger = _options()
    bigger["sizes"] = {"train": 500, "val": 80, "eval": 100}
    task = ArithTask()
    assert [e.question for e in task.load_splits(options, 3)["eval"]] == [
        e.question for e in task.load_splits(bigger, 3)["eval"]
    ]


def test_exclude_is_respected():
    first = generate(100, seed=5, levels=[1])
    taken = {e.question for e in first}
    second = generate(100, seed=5, levels=[1], exclude=taken)
    assert not taken & {e.question for e in second}


def test_exhausted_level_space_raises(monkeypatch):
    # shrink level 1 to 0 + 0: options {0, 1, 2, 3} (near misses lie above 0), 4! = 24 questions
    monkeypatch.setitem(arith.LEVELS, 1, ("+", (0, 0), (0, 0)))
    assert len(generate(24, seed=0, levels=[1])) == 24
    with pytest.raises(ValueError, match="exhausted"):
        generate(25, seed=0, levels=[1])


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_level_visible_and_correct_option_is_the_result(level):
    op, (a_lo, a_hi), (b_lo, b_hi) = LEVELS[level]
    for example in generate(40, seed=level, levels=[level]):
        meta = example.meta
        assert example.level == level
        assert example.question.startswith(f"Level {level}. What is {meta['a']} {op} {meta['b']}?")
        assert a_lo <= meta["a"] <= a_hi and b_lo <= meta["b"] <= b_hi
        expected = meta["a"] + meta["b"] if op == "+" else meta["a"] * meta["b"]
        assert meta["result"] == expected
        options = meta["options"]
        assert options[LETTERS.index(example.ground_truth)] == expected
        assert len(set(options)) == 4 and all(v >= 0 for v in options)
        listed = re.findall(r"^(\d+)\(([A-D])\)$", example.question, re.MULTILINE)
        assert [(L, int(v)) for v, L in listed] == list(zip(LETTERS, options))
        shared = sum(v % 10 == expected % 10 for v in options if v != expected)
        assert shared == FAR_DISTRACTORS[level]
        assert all(abs(v - expected) in NEAR_DELTAS + FAR_DELTAS for v in options if v != expected)
        assert example.messages == [{"role": "user", "content": example.question}]
        assert example.question.count(CONFIDENCE_INSTRUCTION) == 1
        assert example.demonstration == f"{meta['a']} {op} {meta['b']} = {expected}"


def test_letters_roughly_uniform():
    counts = Counter(e.ground_truth for e in generate(2000, seed=11, levels=ALL_LEVELS))
    assert set(counts) == set(LETTERS)
    assert all(400 <= c <= 600 for c in counts.values()), counts


def test_correct_value_is_not_always_the_median_option():
    ranks = Counter(
        sorted(e.meta["options"]).index(e.meta["result"])
        for e in generate(400, seed=2, levels=[3, 5])
    )
    assert all(ranks[r] > 50 for r in range(4)), ranks


def test_level_weights_are_used():
    examples = generate(300, seed=4, levels=[1, 5], level_weights=[0.0, 1.0])
    assert {e.level for e in examples} == {5}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"levels": []},
        {"levels": [6]},
        {"levels": [1, 2], "level_weights": [1.0]},
        {"levels": [1, 2], "level_weights": [-1.0, 2.0]},
    ],
)
def test_bad_levels_raise(kwargs):
    with pytest.raises(ValueError):
        generate(5, seed=0, **kwargs)


def test_verify_response_with_right_and_wrong_letter():
    task = get_task("arith")
    for example in generate(100, seed=9, levels=ALL_LEVELS):
        right = response(example, answer_letter=example.ground_truth, confidence=0.8)
        assert right.endswith("Confidence: 0.80")
        assert task.verify(right, example.ground_truth)
        assert task.extract_answer(right) == example.ground_truth
        wrong_letter = next(L for L in LETTERS if L != example.ground_truth)
        wrong = response(example, answer_letter=wrong_letter, confidence=None)
        assert not task.verify(wrong, example.ground_truth)
        stated = wrong.split("\n")[0].rsplit("= ", 1)[1]
        assert stated == f"{example.meta['options'][LETTERS.index(wrong_letter)]}({wrong_letter})"
        assert "Confidence" not in wrong


def test_response_without_work_and_bad_arguments():
    example = generate(1, seed=0, levels=[2])[0]
    assert response(example, answer_letter="c", confidence=0.5, with_work=False) == (
        "<answer>C</answer>\nConfidence: 0.50"
    )
    with pytest.raises(ValueError):
        response(example, answer_letter="E", confidence=0.5)
    with pytest.raises(ValueError):
        response(example, answer_letter="A", confidence=1.5)


def test_eval_split_is_fixed_across_run_seeds_and_train_val_are_not():
    task = ArithTask()
    first, second = task.load_splits(_options(), seed=0), task.load_splits(_options(), seed=1)
    assert [e.to_row() for e in first["eval"]] == [e.to_row() for e in second["eval"]]
    assert {e.question for e in first["train"]} != {e.question for e in second["train"]}
    moved = _options()
    moved["arith"]["eval_seed"] = 5
    assert {e.question for e in task.load_splits(moved, seed=0)["eval"]} != {
        e.question for e in first["eval"]
    }


def test_load_splits_rejects_missing_size():
    options = _options()
    options["sizes"]["val"] = None
    with pytest.raises(ValueError, match="sizes.val"):
        ArithTask().load_splits(options, seed=0)


def test_registry():
    from caopd.tasks import TASKS

    assert set(TASKS) == {"arith", "science", "tooluse"}
    assert get_task("arith").name == "arith" and get_task("arith").version == "3"
    with pytest.raises(KeyError, match="arith"):
        get_task("nope")


def test_importing_tasks_does_not_import_datasets():
    import subprocess
    import sys

    code = "import sys, caopd.tasks; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
