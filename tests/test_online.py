"""Online distillation (distill.schedule: online) on the tiny random Qwen2: the step and window
plan, targets and examples equal to the round stages' functions on the same rollouts, P_acc from
the student as it is at that step, and kill-and-resume byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from caopd.data import write_split
from caopd.rewrite import build_examples, read_examples
from caopd.rollouts.files import read_rollouts
from caopd.store import ArtifactError
from caopd.targets import compute_targets, read_targets
from caopd.tasks.base import TaskExample
from caopd.training.online import run_online_distill
from caopd.training.online_plan import online_step_plan, online_total_steps, prompts_per_step, refresh_windows
from caopd.training.online_source import OnlineSource
from test_rollouts_hf import _train_to_answer

REWRITE = {
    "calibration": True, "teacher_mode": "demo", "fallback": "demo", "max_prompt_length": 128,
    "max_teacher_prompt_length": 192, "max_completion_length": 24,
}
ROLLOUTS = {"engine": "hf", "k": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 12,
            "batch_size": 64, "tensor_parallel_size": 1}
DISTILL = {
    "rounds": 1, "schedule": "online", "refresh_every": 3, "window_mix": False, "divergence": "forward_kl",
    "jsd_beta": 0.5, "teacher": "frozen", "ema_weight": 0.01, "skip_first_tokens": 1, "lr": 1e-2,
    "weight_decay": 0.0, "epochs": 2, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.2,
    "max_grad_norm": 1.0, "chunk_size": 16, "checkpoint_every": 2,
}


def prompts(n: int) -> list[TaskExample]:
    """Short questions whose right answer is always B (what the answering model says)."""
    out = []
    for i in range(n):
        question = f"What is {i} + {i + 1}?"
        messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": question}]
        out.append(TaskExample(id=f"q{i:02d}", messages=messages,
                           question=question, demonstration=f"{i} + {i + 1} = {2 * i + 1}",
                           ground_truth="B", level=1 + i % 5))
    return out


def make_params(n_prompts: int, **distill) -> dict:
    cfg = dict(DISTILL, **distill)
    return {"distill": cfg, "rollouts": dict(ROLLOUTS), "rewrite": dict(REWRITE), "task": "arith",
            "round": 1, "slice": [0, n_prompts],
            "schedule": {"rounds": 1, "prompts_per_round": [n_prompts]}}


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    write_split(directory / "train.jsonl", prompts(10))
    return directory


def test_prompts_per_step_needs_whole_prompt_groups():
    assert prompts_per_step(32, 1, 8) == 4  # the reference: 4 prompts x 8 rollouts per step
    assert prompts_per_step(4, 2, 2) == 4
    with pytest.raises(ValueError, match="multiple of rollouts.k"):
        prompts_per_step(6, 1, 4)


def test_step_plan_visits_every_prompt_once_per_epoch_and_windows_stay_in_an_epoch():
    plan = online_step_plan(10, 4, 2, seed=3)
    assert [len(epoch) for epoch in plan] == [3, 3]  # 4 + 4 + 2 prompts per epoch
    for epoch in plan:
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert online_step_plan(10, 4, 2, seed=3)[1][0].tolist() == plan[1][0].tolist()
    assert refresh_windows([3, 3], 2) == [0, 0, 1, 2, 2, 3]
    assert refresh_windows([3, 3], 1) == [0, 1, 2, 3, 4, 5]
    assert online_total_steps([10, 7], 4, 2) == 2 * 3 + 2 * 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Killed(RuntimeError):
    """Raised by :func:`kill_after` in place of a SIGKILL: the run stops between steps."""


def kill_after(step: int):
    """An ``on_step`` callback that kills the run once ``step`` has been logged."""

    def on_step(row: dict) -> None:
        if row["step"] == step:
            raise Killed

    return on_step


def online_runner(params: dict, data_dir: Path, student_dir: Path):
    """``run(out, **kw)``: :func:`run_online_distill` of ``params`` at seed 5 into ``out``, its
    resume checkpoints in ``out.work`` (so a second call with the same ``out`` resumes)."""

    def run(out: Path, **kw) -> dict:
        return run_online_distill(params, data_dir=data_dir, student_dir=student_dir, teacher_dir=None,
                                  state_dir=None, out=out, work_dir=out.with_suffix(".work"), seed=5, **kw)

    return run


def assert_same_files(whole: Path, resumed: Path) -> list[Path]:
    """Every file under ``whole`` is byte-identical under ``resumed``; the relative paths."""
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    for rel in files:
        assert _sha(whole / rel) == _sha(resumed / rel), rel
    return files


def test_window_targets_and_examples_are_the_round_stages_functions(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path
):
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    summary = run_online_distill(make_params(10), data_dir=data_dir, student_dir=tiny_model_dir,
                                 teacher_dir=None, state_dir=None, out=out, work_dir=tmp_path / "work",
                                 seed=5)
    assert summary["schedule"] == "online" and summary["steps"] == 6
    assert summary["online_windows"] == 2 and summary["online_rollouts"] == 40  # a window per epoch
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    by_id = {ex.id: ex for ex in prompts(10)}
    windows = sorted((out / "online").glob("refresh-*"))
    assert [w.name for w in windows] == ["refresh-00000", "refresh-00001"]
    for window in windows:
        rollouts = read_rollouts(window / "rollouts.parquet")
        split = [by_id[pid] for pid in sorted({r.prompt_id for r in rollouts})]
        per_rollout, per_prompt = compute_targets(split, rollouts, "arith")
        stored_rollout, stored_prompt = read_targets(window)
        np.testing.assert_array_equal(stored_prompt["p_acc"], per_prompt["p_acc"])
        assert stored_prompt["prompt_id"].tolist() == per_prompt["prompt_id"].tolist()
        assert stored_rollout["correct"].tolist() == per_rollout["correct"].tolist()
        rows, _ = build_examples(split, rollouts, per_prompt, per_rollout, tokenizer, REWRITE)
        stored = read_examples(window / "examples.parquet")
        assert [r["student_input_ids"] for r in stored] == [r["student_input_ids"] for r in rows]
        assert [r["teacher_input_ids"] for r in stored] == [r["teacher_input_ids"] for r in rows]
        assert [r["p_acc"] for r in stored] == [r["p_acc"] for r in rows]
    assert not (tmp_path / "work").exists()


def test_p_acc_comes_from_the_student_as_it_is_at_that_step(tiny_model_dir: Path, tmp_path: Path):
    """Window 0 is sampled from the random student (never answers B: P_acc 0); the student is
    then replaced in place by one that always answers B, and window 1 reads P_acc 1."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    answering = _train_to_answer(tiny_model_dir, tmp_path / "answering")
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).train()
    params = make_params(8, refresh_every=1, epochs=1)
    params["rollouts"]["temperature"] = 0.05  # the answering student answers B, nearly always
    source = OnlineSource(
        prompts=prompts(8), student=student, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
        params=params, seed=1, records_dir=tmp_path / "online",
        accelerator=Accelerator(cpu=True),
    )
    assert source.n_steps == 2 and source.window_of == [0, 1]
    first = source.micro_batches(0)
    assert [ex.p_acc for ex in first[0]] == [0.0] * 8
    assert student.training  # sampling left the student in training mode
    trained = AutoModelForCausalLM.from_pretrained(answering, dtype=torch.float32)
    student.load_state_dict(trained.state_dict())
    second = source.micro_batches(1)
    assert [ex.p_acc for ex in second[0]] == [1.0] * 8
    _, per_prompt = read_targets(tmp_path / "online" / "refresh-00001")
    assert per_prompt["p_acc"].tolist() == [1.0] * 4
    # an earlier window is read back from its files, not sampled again from the changed student
    assert [ex.p_acc for ex in source.micro_batches(0)[0]] == [0.0] * 8


@pytest.mark.parametrize(
    "refresh_every, resumed_window",
    [(2, "sampled after the checkpoint, sampled again"), (3, "in progress at the checkpoint, kept")],
)
def test_killed_online_run_resumes_byte_identical(
    refresh_every: int, resumed_window: str, tiny_model_dir: Path, data_dir: Path, tmp_path: Path
):
    # 6 steps (3 per epoch), checkpoints every 2; killed after step 3, resumed at step index 2,
    # the first step of window 1 (refresh_every 2) or the last of window 0 (refresh_every 3)
    run = online_runner(make_params(10, refresh_every=refresh_every), data_dir, tiny_model_dir)
    whole = run(tmp_path / "whole")
    with pytest.raises(Killed):
        run(tmp_path / "resumed", on_step=kill_after(3))
    work = tmp_path / "resumed.work"
    assert sorted(p.name for p in work.glob("step-*")) == ["step-00000002"]
    sampled = sorted(p.name for p in (work / "online").glob("refresh-*"))
    assert sampled == (["refresh-00000", "refresh-00001"] if refresh_every == 2 else ["refresh-00000"])
    again = run(tmp_path / "resumed")
    assert again["resumed_from"] == 2 and again["steps"] == whole["steps"] == 6
    files = assert_same_files(tmp_path / "whole", tmp_path / "resumed")
    assert sum(str(f).startswith("online/") for f in files) == 5 * whole["online_windows"]


def test_a_modified_window_is_refused_on_resume(tiny_model_dir: Path, data_dir: Path, tmp_path: Path):
    params = make_params(10)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        run_online_distill(params, data_dir=data_dir, student_dir=tiny_model_dir, teacher_dir=None,
                           state_dir=None, out=out, work_dir=tmp_path / "work", seed=5, on_step=kill_after(3))
    examples = tmp_path / "work" / "online" / "refresh-00000" / "examples.parquet"
    examples.write_bytes(examples.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="refresh-00000"):
        run_online_distill(params, data_dir=data_dir, student_dir=tiny_model_dir, teacher_dir=None,
                           state_dir=None, out=out, work_dir=tmp_path / "work", seed=5)


def test_window_mix_deals_the_windows_examples_over_its_steps(tiny_model_dir: Path, tmp_path: Path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def source(mix: bool, where: str) -> OnlineSource:
        student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        return OnlineSource(
            prompts=prompts(10), student=student, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
            params=make_params(10, refresh_every=3, epochs=1, window_mix=mix), seed=2,
            records_dir=tmp_path / where, accelerator=Accelerator(cpu=True),
        )

    plain, mixed = source(False, "plain"), source(True, "mixed")  # one window of 3 steps: 4+4+2 prompts

    def ids(batches):
        return [tuple(ex.student_ids.tolist()) for batch in batches for ex in batch]

    plain_steps = [ids(plain.micro_batches(s)) for s in range(3)]
    mixed_steps = [ids(mixed.micro_batches(s)) for s in range(3)]
    assert [len(s) for s in mixed_steps] == [len(s) for s in plain_steps] == [8, 8, 4]
    assert sorted(sum(mixed_steps, [])) == sorted(sum(plain_steps, []))  # the same examples ...
    assert mixed_steps != plain_steps  # ... dealt over the steps in another order
    # a plain step holds whole prompt groups (K = 2 rollouts of the same prompt next to each other)
    assert all(s[i][: 20] == s[i + 1][: 20] for s in plain_steps for i in range(0, len(s), 2))
