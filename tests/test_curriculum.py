"""The entropy-gated length curriculum (caopd.training.curriculum): the rule, table by table; the
mean token entropy on a hand-computable distribution; the budgets; the plan's wiring; a rounds
decision inside the rollouts stage read by the rewrite; and an online run whose windows climb the
ladder, log it in their curves and resume byte-identical."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from caopd.data import write_split
from caopd.training.curriculum import LengthCurriculum, budgets, next_index, round_curriculum
from caopd.training.entropy import completion_entropy, mean_token_entropy, token_entropies

LADDER = [16, 32, 64]


@pytest.mark.parametrize("index, entropy, min_entropy, expected, why", [
    (0, 1.5, 1.0, 1, "entropy above the gate: up one rung"),
    (0, 1.0, 1.0, 1, "entropy at the gate (>=): up one rung"),
    (0, 0.99, 1.0, 0, "entropy below the gate: holds"),
    (1, 2.0, 1.0, 2, "up from the middle rung"),
    (2, 5.0, 1.0, 2, "the top rung holds whatever the entropy"),
    (1, math.nan, 1.0, 1, "nothing measured (NaN): holds"),
    (2, 0.1, 1.0, 2, "below the gate at the top: holds, never down"),
    (1, 0.0, 0.0, 2, "a zero gate always advances"),
])
def test_the_rule_advances_and_holds(index, entropy, min_entropy, expected, why):
    assert next_index(LADDER, index, entropy, min_entropy) == expected, why


def test_a_sequence_of_decisions_climbs_while_the_entropy_stays_high():
    index, seen = 0, []
    for entropy in [1.2, 0.7, 1.1, 1.3, 1.4]:  # measured at rounds 2..6
        index = next_index(LADDER, index, entropy, 1.0)
        seen.append(LADDER[index])
    assert seen == [32, 32, 64, 64, 64]
    with pytest.raises(ValueError, match="not a rung"):
        next_index(LADDER, 3, 1.0, 1.0)


def test_mean_token_entropy_by_hand():
    """Uniform over 4: log 4; (1/2, 1/4, 1/4, 0⁺): 1.5 log 2; the masked position is left out."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                           [math.log(0.5), math.log(0.25), math.log(0.25), -1e4],
                           [9.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(token_entropies(logits)[:2], torch.tensor([2 * math.log(2), 1.5 * math.log(2)]))
    assert mean_token_entropy(logits, torch.tensor([1, 1, 0])) == pytest.approx(1.75 * math.log(2), rel=1e-6)
    assert math.isnan(mean_token_entropy(logits, torch.zeros(3)))
    with pytest.raises(ValueError, match="mask"):
        mean_token_entropy(logits, torch.ones(2))


def test_budgets_cut_rollouts_and_rewrite_by_the_same_tokens():
    assert budgets(16, 40, 48) == (16, 24)
    assert budgets(40, 40, 48) == (40, 48)
    with pytest.raises(ValueError, match="outside"):
        budgets(41, 40, 48)
    with pytest.raises(ValueError, match="strictly increasing"):
        LengthCurriculum((16, 16), 1.0, 4)


def test_the_plan_wires_each_round_to_the_previous_rollouts():
    from caopd.config import ConfigError, resolve
    from caopd.plan import build_plan

    base = {"distill": {"rounds": 3}, "rollouts": {"max_new_tokens": 40},
            "rewrite": {"max_completion_length": 48}, "task": {"sizes": {"train": 30}}}
    ladder = {"lengths": [16, 32, 40], "min_entropy": 0.5, "n_prompts": 4}
    cfg = {**base, "variants": {"plain": {}, "ladder": {"distill": {"length_curriculum": ladder}}}}
    plan = build_plan(resolve(cfg, check_disk=False))
    plain, climbing = plan.variants["plain"], plan.variants["ladder"]
    for r in (1, 2, 3):
        assert "length_curriculum" not in plain.get("rollouts", r).params
        assert "previous" not in plain.get("rollouts", r).upstream
        assert climbing.get("rollouts", r).params["length_curriculum"] == ladder
    assert "previous" not in climbing.get("rollouts", 1).upstream
    assert climbing.get("rollouts", 3).upstream["previous"] == climbing.get("rollouts", 2).key
    assert plain.get("prepare_data").key == climbing.get("prepare_data").key
    bad = {**base, "variants": {"v": {"distill": {"length_curriculum": {**ladder, "lengths": [16, 48]}}}}}
    with pytest.raises(ConfigError, match="rollouts.max_new_tokens"):
        resolve(bad, check_disk=False)


def _prompts(n: int, offset: int = 0):
    from caopd.tasks.base import TaskExample

    out = []
    for i in range(offset, offset + n):
        question = f"What is {i} + {i + 1}?"
        messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": question}]
        out.append(TaskExample(id=f"q{i:02d}", messages=messages, question=question,
                               demonstration=f"{i} + {i + 1} = {2 * i + 1}", ground_truth="B", level=1))
    return out


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    write_split(directory / "train.jsonl", _prompts(10))
    write_split(directory / "val.jsonl", _prompts(4, offset=50))
    return directory


ROLLOUTS = {"engine": "hf", "k": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 12,
            "batch_size": 64, "tensor_parallel_size": 1}
LADDER_CFG = {"lengths": [4, 8, 12], "n_prompts": 3}


def test_a_round_decides_from_its_input_student_and_the_rewrite_follows(
        tiny_model_dir: Path, data_dir: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from caopd.rewrite import read_examples, run_rewrite
    from caopd.rollouts.files import read_rollouts
    from caopd.rollouts.stage import training_rollouts
    from caopd.targets import run_targets

    model = tmp_path / "base"
    model.mkdir()
    (model / "model").symlink_to(tiny_model_dir)
    params = {"rollouts": ROLLOUTS, "round": 1, "slice": [0, 3],
              "length_curriculum": {**LADDER_CFG, "min_entropy": 0.0}}
    first = training_rollouts(params, {"data": data_dir, "model": model}, tmp_path / "r1", seed=3)
    record = json.loads((tmp_path / "r1" / "curriculum.json").read_text())
    assert record["index"] == 0 and record["previous_index"] is None and first["curriculum_length"] == 4.0
    assert record["entropy"] == first["curriculum_entropy"] > 0 and record["entropy_prompts"] == 3
    assert all(len(r.completion_token_ids) <= 4 for r in read_rollouts(tmp_path / "r1" / "rollouts.parquet"))

    inputs = {"data": data_dir, "model": model, "previous": tmp_path / "r1"}
    up = round_curriculum({**params, "round": 2}, inputs, tmp_path / "r2", seed=3)  # a zero gate: up
    held = round_curriculum({**params, "round": 2, "length_curriculum": {**LADDER_CFG, "min_entropy": 1e6}},
                            inputs, tmp_path / "r2h", seed=3)
    assert (up["index"], up["length"], held["index"], held["length"]) == (1, 8, 0, 4)
    assert up["entropy"] == held["entropy"]  # the same student, probe and seed

    # the entropy is the token-weighted mean over the probe's completions, recomputed by hand
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = [[1, 2, 3], [4, 5, 6, 7]]
    with torch.no_grad():
        logits = [student(input_ids=torch.tensor([p + c])).logits[0] for p, c in zip(ids, [[8, 9], [10]])]
    want = torch.cat([token_entropies(logits[0][2:4]), token_entropies(logits[1][3:4])]).mean()
    assert completion_entropy(student, ids, [[8, 9], [10]]) == (pytest.approx(float(want), rel=1e-6), 3)

    run_targets(data_dir, tmp_path / "r1", tmp_path / "t1", "arith")
    cfg = {"calibration": True, "teacher_mode": "demo", "fallback": "demo", "max_prompt_length": 128,
           "max_teacher_prompt_length": 192, "max_completion_length": 24}
    summary = run_rewrite(data_dir, tmp_path / "r1", tmp_path / "t1", tiny_model_dir, tmp_path / "w1", cfg,
                          sampled_len=True)
    assert summary["curriculum_max_completion_length"] == 24 - (12 - 4)
    rows = read_examples(tmp_path / "w1" / "examples.parquet")
    assert all(row["completion_len"] <= 16 and 0 <= row["sampled_len"] <= 4 for row in rows)


def test_online_windows_climb_the_ladder_log_it_and_resume_byte_identical(
        tiny_model_dir: Path, data_dir: Path, tmp_path: Path):
    from caopd.training.curves import read_curves
    from test_online import Killed, assert_same_files, kill_after, make_params, online_runner

    params = make_params(10, refresh_every=2, divergence="reverse_kl", estimator="vopd",
                         length_curriculum={**LADDER_CFG, "min_entropy": 0.0})
    params["rollouts"] = dict(ROLLOUTS)
    run = online_runner(params, data_dir, tiny_model_dir)
    whole = run(tmp_path / "whole")
    assert whole["curriculum_lengths"] == [4, 8, 12, 12]  # windows of steps [0 1] [2] [3 4] [5]
    windows = sorted((tmp_path / "whole" / "online").glob("refresh-*"))
    for window, length in zip(windows, whole["curriculum_lengths"]):
        summary = json.loads((window / "summary.json").read_text())
        assert summary["curriculum"]["length"] == length
        from caopd.rollouts.files import read_rollouts

        assert max(len(r.completion_token_ids) for r in read_rollouts(window / "rollouts.parquet")) <= length
    curves = read_curves(tmp_path / "whole" / "curves.parquet")
    assert [row["curriculum_length"] for row in curves] == [4.0, 4.0, 8.0, 12.0, 12.0, 12.0]
    assert all(row["curriculum_entropy"] > 0 for row in curves)

    with pytest.raises(Killed):  # killed after step 3; resumes at step index 2, window 1's first
        run(tmp_path / "resumed", on_step=kill_after(3))
    again = run(tmp_path / "resumed")
    assert again["resumed_from"] == 2
    assert_same_files(tmp_path / "whole", tmp_path / "resumed")


def test_the_next_online_round_carries_the_last_windows_rung(tmp_path: Path):
    from caopd.store import write_json
    from caopd.training.curriculum import last_online_index

    assert last_online_index(tmp_path / "online") is None
    for window, index in enumerate([0, 1, 1]):
        (tmp_path / "online" / f"refresh-{window:05d}").mkdir(parents=True)
        write_json(tmp_path / "online" / f"refresh-{window:05d}" / "summary.json",
                   {"window": window, "curriculum": {"index": index}})
    assert last_online_index(tmp_path / "online") == 1
