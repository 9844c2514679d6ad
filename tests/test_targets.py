"""Stage targets: P_acc by hand, the per-rollout and per-prompt frames, the stage files."""

from __future__ import annotations

import math

import pytest

from caopd.data import write_split
from caopd.rollouts.engine import RolloutRecord
from caopd.rollouts.files import write_rollouts
from caopd.targets import (
    PROMPT_COLUMNS,
    ROLLOUT_COLUMNS,
    compute_targets,
    p_acc,
    p_acc_histogram,
    read_targets,
    run_targets,
)
from caopd.tasks.arith import generate


@pytest.mark.parametrize(("n_correct", "k", "expected"), [(0, 8, 0.0), (3, 8, 0.375), (8, 8, 1.0)])
def test_p_acc_by_hand(n_correct, k, expected):
    assert p_acc(n_correct, k) == expected
    assert isinstance(p_acc(n_correct, k), float)


@pytest.mark.parametrize(("n_correct", "k"), [(0, 0), (9, 8), (-1, 8), (1.0, 8), (True, 8)])
def test_p_acc_rejects(n_correct, k):
    with pytest.raises(ValueError, match="p_acc"):
        p_acc(n_correct, k)


def _record(prompt_id: str, sample_index: int, text: str, finish: str = "stop") -> RolloutRecord:
    return RolloutRecord(
        prompt_id=prompt_id,
        sample_index=sample_index,
        prompt_token_ids=[1, 2, 3],
        completion_token_ids=[4, 5],
        text=text,
        finish_reason=finish,
        seed=0,
    )


@pytest.fixture(scope="module")
def hand_set():
    """Three arith prompts: 4 rollouts with 3 correct; 4 rollouts with 0 correct; 2 rollouts."""
    examples = generate(3, seed=1, levels=[1, 3])
    a, b, c = examples
    wrong = {ex.id: next(x for x in "ABCD" if x != ex.ground_truth) for ex in examples}

    def right(ex, conf="0.90"):
        return f"<answer>{ex.ground_truth}</answer>\nConfidence: {conf}"

    def bad(ex, conf="0.80"):
        return f"<answer>{wrong[ex.id]}</answer>\nConfidence: {conf}"

    rollouts = [
        # given out of order on purpose: the frames come back sorted
        _record(a.id, 3, bad(a, "0.50")),
        _record(a.id, 0, right(a, "0.90")),
        _record(a.id, 1, right(a, "0.70")),
        _record(a.id, 2, f"<answer>{a.ground_truth}</answer>"),  # correct, no confidence
        _record(b.id, 0, bad(b)),
        _record(b.id, 1, bad(b)),
        _record(b.id, 2, "no answer at all", "length"),
        _record(b.id, 3, bad(b, "high")),  # a label without a usable value
        _record(c.id, 1, right(c, "85%")),
        _record(c.id, 0, bad(c, "0.40")),
    ]
    return examples, rollouts


def test_compute_targets_hand_made(hand_set):
    examples, rollouts = hand_set
    a, b, c = examples
    per_rollout, per_prompt = compute_targets(examples, rollouts, "arith")

    assert tuple(per_rollout.columns) == ROLLOUT_COLUMNS
    assert tuple(per_prompt.columns) == PROMPT_COLUMNS
    keys = list(zip(per_rollout["prompt_id"], per_rollout["sample_index"]))
    assert keys == sorted(keys) and len(keys) == len(rollouts)

    rows = {(r.prompt_id, r.sample_index): r for r in per_rollout.itertuples()}
    assert rows[(a.id, 0)].correct and rows[(a.id, 0)].stated_confidence == 0.9
    assert rows[(a.id, 2)].correct and math.isnan(rows[(a.id, 2)].stated_confidence)
    assert not rows[(a.id, 3)].correct and rows[(a.id, 3)].answer != a.ground_truth
    assert rows[(a.id, 0)].answer == a.ground_truth
    assert rows[(b.id, 2)].answer is None and rows[(b.id, 2)].finish_reason == "length"
    assert math.isnan(rows[(b.id, 3)].stated_confidence)
    assert rows[(c.id, 1)].stated_confidence == pytest.approx(0.85)

    prompts = per_prompt.set_index("prompt_id")
    assert list(per_prompt["prompt_id"]) == sorted([a.id, b.id, c.id])
    assert prompts.loc[a.id, "k"] == 4 and prompts.loc[a.id, "n_correct"] == 3
    assert prompts.loc[a.id, "p_acc"] == 0.75
    assert prompts.loc[a.id, "mean_stated_confidence"] == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert prompts.loc[a.id, "format_adherence"] == 0.75
    assert prompts.loc[b.id, "p_acc"] == 0.0 and prompts.loc[b.id, "format_adherence"] == 0.5
    # a prompt with a different number of rollouts is allowed and its own k recorded
    assert prompts.loc[c.id, "k"] == 2 and prompts.loc[c.id, "p_acc"] == 0.5
    assert prompts.loc[c.id, "level"] == c.level


def test_all_unparsed_gives_nan_mean():
    (ex,) = generate(1, seed=2, levels=[1])
    _, per_prompt = compute_targets([ex], [_record(ex.id, 0, "nothing")], "arith")
    assert math.isnan(per_prompt["mean_stated_confidence"][0])
    assert per_prompt["format_adherence"][0] == 0.0


def test_unknown_prompt_id_raises_naming_it(hand_set):
    examples, rollouts = hand_set
    stray = _record("arith-train-999999", 0, "<answer>A</answer>")
    with pytest.raises(ValueError, match="arith-train-999999"):
        compute_targets(examples, [*rollouts, stray], "arith")


def test_duplicate_rollout_raises(hand_set):
    examples, rollouts = hand_set
    with pytest.raises(ValueError, match="duplicate"):
        compute_targets(examples, [*rollouts, rollouts[0]], "arith")


def test_histogram_covers_every_value():
    examples = generate(3, seed=3, levels=[2])
    rollouts = [
        _record(ex.id, i, f"<answer>{ex.ground_truth if i < n else 'Z'}</answer>")
        for ex, n in zip(examples, (0, 2, 2))
        for i in range(4)
    ]
    _, per_prompt = compute_targets(examples, rollouts, "arith")
    assert p_acc_histogram(per_prompt) == {"0.00": 1, "0.25": 0, "0.50": 2, "0.75": 0, "1.00": 0}


def test_run_targets_files_and_summary(tmp_path, hand_set):
    examples, rollouts = hand_set
    data, roll = tmp_path / "data", tmp_path / "rollouts"
    data.mkdir()
    write_split(data / "train.jsonl", examples)
    write_rollouts(rollouts, roll / "rollouts.parquet")

    summary = run_targets(data, roll, tmp_path / "t1", "arith")
    again = run_targets(data, roll, tmp_path / "t2", "arith")
    assert summary == again
    for name in ("rollouts_scored.parquet", "targets.parquet"):
        assert (tmp_path / "t1" / name).read_bytes() == (tmp_path / "t2" / name).read_bytes()

    assert summary["n_prompts"] == 3 and summary["n_rollouts"] == 10
    assert summary["k_values"] == [2, 4]
    assert summary["mean_p_acc"] == pytest.approx((0.75 + 0.0 + 0.5) / 3)
    assert sum(summary["p_acc_histogram"].values()) == 3
    assert summary["p_acc_histogram"]["0.75"] == 1 and summary["p_acc_histogram"]["0.00"] == 1
    stated = [0.5, 0.9, 0.7, 0.8, 0.8, 0.85, 0.4]
    assert summary["mean_stated_confidence"] == pytest.approx(sum(stated) / len(stated))
    assert summary["stated_minus_empirical"] == pytest.approx(
        summary["mean_stated_confidence"] - summary["mean_p_acc"]
    )
    assert summary["format_adherence"] == pytest.approx(7 / 10)

    per_rollout, per_prompt = read_targets(tmp_path / "t1")
    expected_rollout, expected_prompt = compute_targets(examples, rollouts, "arith")
    assert per_rollout["correct"].tolist() == expected_rollout["correct"].tolist()
    assert per_prompt["p_acc"].tolist() == expected_prompt["p_acc"].tolist()
    assert per_prompt["level"].tolist() == expected_prompt["level"].tolist()
    assert per_rollout["stated_confidence"].isna().sum() == 3
    assert per_rollout["answer"].tolist() == expected_rollout["answer"].tolist()


def test_run_targets_empty_rollouts_raises(tmp_path):
    data, roll = tmp_path / "data", tmp_path / "rollouts"
    data.mkdir()
    write_split(data / "train.jsonl", generate(1, seed=0, levels=[1]))
    write_rollouts([], roll / "rollouts.parquet")
    with pytest.raises(ValueError, match="no rollouts"):
        run_targets(data, roll, tmp_path / "out", "arith")
