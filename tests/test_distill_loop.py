"""The distill loop on a tiny Qwen2 (hidden 32, 2 layers): plan, loss, EMA, resume, rounds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from caopd.training.data import (
    collate,
    epoch_order,
    load_examples,
    round_step_plan,
    shard,
    steps_in_round,
    total_optimizer_steps,
)
from caopd.training.distill import run_distill
from caopd.training.objective import StudentObjective
from caopd.training.prefix import model_inputs
from caopd.training.optimizer import lr_factor, warmup_steps
from caopd.training.divergence import DivergenceSpec, token_divergence
from caopd.training.state import TRAINER_STATE, load_causal_lm
from caopd.training.teacher_states import teacher_hidden_states

EXAMPLES_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("student_input_ids", pa.list_(pa.int32())),
        ("student_prompt_len", pa.int32()),
        ("teacher_input_ids", pa.list_(pa.int32())),
        ("teacher_prompt_len", pa.int32()),
        ("completion_len", pa.int32()),
        ("p_acc", pa.float64()),
        ("stated_confidence", pa.float64()),
        ("correct", pa.bool_()),
        ("rewritten", pa.bool_()),
    ]
)


def make_examples(model_dir: Path, path: Path, n: int, seed: int = 0) -> Path:
    """``n`` examples in the rewrite stage's format: short arithmetic prompts and answers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        p_acc = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
        question = f"What is {a} + {b}?" + " Answer" * rng.randint(0, 3)
        student = tok(f"user\n{question}\nassistant\n", add_special_tokens=False)["input_ids"]
        teacher = tok(
            f"user\n{question}\nThis is an example: <answer>A</answer> {a + b}\n"
            f"Confidence: {p_acc:.2f}\nassistant\n",
            add_special_tokens=False,
        )["input_ids"]
        completion = tok(
            f"{a} + {b} = {a + b}" * rng.randint(1, 2) + f"\n<answer>B</answer>\nConfidence: {p_acc:.2f}",
            add_special_tokens=False,
        )["input_ids"] + [tok.eos_token_id]
        rows.append(
            {
                "prompt_id": f"q{i // 2}",
                "sample_index": i % 2,
                "student_input_ids": student + completion,
                "student_prompt_len": len(student),
                "teacher_input_ids": teacher + completion,
                "teacher_prompt_len": len(teacher),
                "completion_len": len(completion),
                "p_acc": p_acc,
                "stated_confidence": None if i % 3 == 0 else rng.random(),
                "correct": bool(i % 2),
                "rewritten": True,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=EXAMPLES_SCHEMA), path)
    return path


BASE_DISTILL = {
    "rounds": 1,
    "schedule": "rounds",
    "refresh_every": 1,
    "window_mix": False,
    "divergence": "forward_kl",
    "jsd_beta": 0.5,
    "teacher": "ema",
    "ema_weight": 0.1,
    "skip_first_tokens": 3,
    "lr": 1.0e-2,
    "weight_decay": 0.01,
    "epochs": 2,
    "batch_size": 3,
    "grad_accum": 2,
    "warmup_ratio": 0.2,
    "max_grad_norm": 1.0,
    "chunk_size": 16,
    "checkpoint_every": 2,
}


def make_params(examples_per_round: list[int], round_: int = 1, **overrides) -> dict:
    distill = dict(BASE_DISTILL, rounds=len(examples_per_round), **overrides)
    schedule = {"rounds": len(examples_per_round), "examples_per_round": examples_per_round}
    return {"distill": distill, "round": round_, "schedule": schedule}


def distill(params: dict, examples: Path, student: Path, out: Path, **kw) -> dict:
    args = dict(teacher_dir=None, state_dir=None, work_dir=out.parent / f"{out.name}.work", seed=7)
    args.update(kw)
    return run_distill(params, examples_path=examples, student_dir=student, out=out, **args)


@pytest.fixture(scope="module")
def examples11(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_examples(tiny_model_dir, tmp_path_factory.mktemp("ex") / "examples.parquet", 11)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


# ---------------------------------------------------------------- pure plan and schedule


def test_step_plan_covers_every_example_once_per_epoch() -> None:
    for n, bs, ga, epochs in [(11, 3, 2, 2), (7, 7, 1, 1), (5, 2, 3, 3), (1, 4, 2, 1)]:
        plan = round_step_plan(n, bs, ga, epochs, seed=3)
        assert len(plan) == steps_in_round(n, bs, ga, epochs)
        assert all(1 <= len(step) <= ga for step in plan)
        flat = np.concatenate([mb for step in plan for mb in step])
        assert len(flat) == n * epochs
        for e in range(epochs):
            assert sorted(flat[e * n : (e + 1) * n].tolist()) == list(range(n))
        assert all(len(mb) <= bs for step in plan for mb in step)
    assert np.array_equal(epoch_order(11, 3, 1), epoch_order(11, 3, 1))
    assert not np.array_equal(epoch_order(11, 3, 0), epoch_order(11, 3, 1))
    schedule = {"rounds": 2, "examples_per_round": [11, 7]}
    # ceil(ceil(11/3)*2/2) + ceil(ceil(7/3)*2/2) = 4 + 3
    assert total_optimizer_steps(schedule, batch_size=3, grad_accum=2, epochs=2) == 7


def test_shard_splits_rows_and_fills_empty_ranks() -> None:
    batch = np.array([5, 2, 9])
    assert [shard(batch, r, 2)[0].tolist() for r in range(2)] == [[5, 9], [2]]
    rows, real = shard(np.array([4]), 1, 2)
    assert rows.tolist() == [4] and not real


def test_lr_schedule_warmup_then_cosine() -> None:
    total, warm = 10, warmup_steps(10, 0.2)
    assert warm == 2
    assert lr_factor(0, total, warm) == pytest.approx(0.5)
    assert lr_factor(1, total, warm) == pytest.approx(1.0)
    assert lr_factor(2, total, warm) == pytest.approx(1.0)
    assert lr_factor(6, total, warm) == pytest.approx(0.5)
    assert lr_factor(10, total, warm) == pytest.approx(0.0)
    assert lr_factor(25, total, warm) == pytest.approx(0.0)  # beyond the plan: stays at the end
    assert lr_factor(0, 5, 0) == pytest.approx(1.0)


def test_collate_positions_predict_the_completion(tiny_model_dir: Path, examples11: Path) -> None:
    examples = load_examples(examples11)[:4]
    batch = collate(examples, skip_first_tokens=3)
    s_width, t_width = batch.student_ids.shape[1], batch.teacher_ids.shape[1]
    s_next = batch.student_ids.flatten()[batch.student_positions + 1]
    t_next = batch.teacher_ids.flatten()[batch.teacher_positions + 1]
    assert torch.equal(s_next, t_next)  # aligned by completion index
    expected_tokens = torch.cat([torch.from_numpy(ex.student_ids[-ex.completion_len :]) for ex in examples])
    assert torch.equal(s_next, expected_tokens)
    rows = batch.student_positions // s_width
    assert torch.equal(rows, batch.teacher_positions // t_width)
    expected_w = torch.cat(
        [(torch.arange(ex.completion_len) >= 3).float() for ex in examples]
    )
    assert torch.equal(batch.weights, expected_w)
    assert batch.n_loss_tokens == sum(ex.completion_len - 3 for ex in examples)
    filler = collate(examples[:1], skip_first_tokens=3, real=False)
    assert filler.n_loss_tokens == 0 and not filler.real.any()


def test_examples_with_mismatched_completion_are_rejected(tmp_path: Path) -> None:
    row = {
        "prompt_id": "q0", "sample_index": 0, "student_input_ids": [1, 2, 3, 4],
        "student_prompt_len": 2, "teacher_input_ids": [9, 9, 3, 5], "teacher_prompt_len": 2,
        "completion_len": 2, "p_acc": 0.5, "stated_confidence": None, "correct": True,
        "rewritten": True,
    }
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=EXAMPLES_SCHEMA), path)
    with pytest.raises(ValueError, match="completion ids differ"):
        load_examples(path)
    row.update(teacher_input_ids=[9, 3, 4], teacher_prompt_len=2)
    pq.write_table(pa.Table.from_pylist([row], schema=EXAMPLES_SCHEMA), path)
    with pytest.raises(ValueError, match="teacher_prompt_len"):
        load_examples(path)


# ---------------------------------------------------------------- loss and gradients


def test_skipped_tokens_do_not_affect_the_loss(tiny_model_dir: Path, examples11: Path) -> None:
    examples = load_examples(examples11)[:3]
    batch = collate(examples, skip_first_tokens=3)
    student, teacher = load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir)
    objective = StudentObjective(student, DivergenceSpec("reverse_kl", 0.5), chunk_size=5)
    t_hidden = teacher_hidden_states(teacher, batch)
    head = teacher.get_output_embeddings()

    def loss(hidden: torch.Tensor) -> torch.Tensor:
        value, _ = objective(model_inputs(batch)[0], hidden, head.weight, head.bias, batch.weights)
        return value

    skipped = batch.weights == 0
    assert int(skipped.sum()) == 3 * len(examples)
    altered = t_hidden.clone()
    altered[skipped] = torch.randn_like(altered[skipped]) * 10
    torch.testing.assert_close(loss(altered), loss(t_hidden), rtol=0, atol=0)
    altered_kept = t_hidden.clone()
    altered_kept[~skipped] += 1.0
    assert not torch.equal(loss(altered_kept), loss(t_hidden))


def direct_mean_divergence(student, teacher, examples, kind: str, skip: int) -> float:
    """Full B×T×V logits, one unpadded example at a time: the reference for the loop's loss."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for ex in examples:
            c = ex.completion_len
            s_logits = student(torch.from_numpy(ex.student_ids)[None]).logits[0]
            t_logits = teacher(torch.from_numpy(ex.teacher_ids)[None]).logits[0]
            ls, lt = len(ex.student_ids), len(ex.teacher_ids)
            s_pos = torch.arange(ls - c - 1, ls - 1)[skip:]
            t_pos = torch.arange(lt - c - 1, lt - 1)[skip:]
            d = token_divergence(s_logits[s_pos], t_logits[t_pos], kind, beta=0.3)
            total += d.double().sum()
            count += len(s_pos)
    return (total / count).item()


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_batched_loss_equals_full_logits(kind: str, tiny_model_dir: Path, examples11: Path) -> None:
    examples = load_examples(examples11)[:5]
    student, teacher = load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    batch = collate(examples, skip_first_tokens=2)
    head = teacher.get_output_embeddings()
    sum_loss, stats = StudentObjective(student, DivergenceSpec(kind, 0.3), chunk_size=7)(
        model_inputs(batch)[0], teacher_hidden_states(teacher, batch), head.weight, head.bias,
        batch.weights,
    )
    mean = (sum_loss / batch.n_loss_tokens).item()
    want = direct_mean_divergence(student, teacher, examples, kind, skip=2)
    assert want > 1e-2
    assert mean == pytest.approx(want, rel=1e-5)
    assert stats.mean_divergence.item() == pytest.approx(want, rel=1e-5)


class RecordingTracker:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log_curves(self, rows: list[dict]) -> None:
        self.rows.extend(rows)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_one_step_loss_update_and_ema(kind: str, tiny_model_dir: Path, examples11: Path, tmp_path: Path) -> None:
    examples = load_examples(examples11)
    params = make_params(
        [11], divergence=kind, jsd_beta=0.3, batch_size=11, grad_accum=1, epochs=1, warmup_ratio=0.0
    )
    tracker = RecordingTracker()
    summary = distill(params, examples11, tiny_model_dir, tmp_path / "out", tracker=tracker)
    assert summary["steps"] == 1 and summary["global_step"] == 1

    curves = pq.read_table(tmp_path / "out" / "curves.parquet").to_pylist()
    assert curves == tracker.rows and len(curves) == 1
    row = curves[0]
    base_model = load_causal_lm(tiny_model_dir)
    want = direct_mean_divergence(base_model, base_model, examples, kind, skip=3)
    # teacher = student here, so the divergence is small (~1e-4) and fp32 cancellation limits
    # the agreement; test_batched_loss_equals_full_logits checks it tightly for an unlike teacher.
    assert row["loss"] == pytest.approx(want, rel=2e-3)
    assert row["divergence"] == pytest.approx(row["loss"], rel=1e-6)
    assert row["lr"] == pytest.approx(1.0e-2)
    assert row["mean_p_acc"] == pytest.approx(np.mean([ex.p_acc for ex in examples]))
    assert row["format_adherence"] == pytest.approx(np.mean([ex.has_confidence for ex in examples]))
    assert row["entropy"] > 0 and row["grad_norm"] > 0 and row["step"] == 1 and row["round"] == 1

    base, student = weights(tiny_model_dir), weights(tmp_path / "out" / "student")
    teacher = weights(tmp_path / "out" / "teacher")
    assert set(base) == set(student) == set(teacher)
    changed = [name for name in base if not torch.equal(base[name], student[name])]
    assert len(changed) == len(base), f"unchanged after one step: {set(base) - set(changed)}"
    for name in base:  # teacher <- teacher + w (student - teacher), in fp32, teacher = base
        assert teacher[name].dtype == torch.float32
        assert torch.equal(teacher[name], torch.lerp(base[name], student[name], 0.1)), name
    for sub in ("student", "teacher"):
        assert (tmp_path / "out" / sub / "tokenizer.json").read_bytes() == (
            tiny_model_dir / "tokenizer.json"
        ).read_bytes()
    state = json.loads((tmp_path / "out" / "state" / TRAINER_STATE).read_text())
    assert state["global_step"] == 1 and state["rounds_done"] == 1
    assert not (tmp_path / "out.work").exists()


def test_frozen_teacher_never_moves(tiny_model_dir: Path, examples11: Path, tmp_path: Path) -> None:
    params = make_params([11], teacher="frozen", epochs=1)
    distill(params, examples11, tiny_model_dir, tmp_path / "out")
    base, teacher = weights(tiny_model_dir), weights(tmp_path / "out" / "teacher")
    assert all(torch.equal(base[k], teacher[k]) for k in base)
    student = weights(tmp_path / "out" / "student")
    assert not all(torch.equal(base[k], student[k]) for k in base)


# ---------------------------------------------------------------- resume and determinism


class Killed(RuntimeError):
    pass


def test_killed_run_resumes_byte_identical(tiny_model_dir: Path, examples11: Path, tmp_path: Path) -> None:
    params = make_params([11])  # 11 examples, bs 3, 2 epochs, accum 2: 4 steps, ckpt at 2
    full = distill(params, examples11, tiny_model_dir, tmp_path / "a")
    assert full["steps"] == 4 and full["resumed_from"] is None

    def kill_at_3(row: dict) -> None:
        if row["step"] == 3:
            raise Killed

    with pytest.raises(Killed):
        distill(params, examples11, tiny_model_dir, tmp_path / "b", on_step=kill_at_3)
    work = tmp_path / "b.work"
    assert [p.name for p in work.iterdir()] == ["step-00000002"]
    assert not (tmp_path / "b").exists()
    resumed = distill(params, examples11, tiny_model_dir, tmp_path / "b")
    assert resumed["resumed_from"] == 2 and resumed["global_step"] == 4
    assert not work.exists()

    again = distill(params, examples11, tiny_model_dir, tmp_path / "c")  # a plain rerun
    for other in ("b", "c"):
        for sub in ("student", "teacher"):
            assert (tmp_path / "a" / sub / "model.safetensors").read_bytes() == (
                tmp_path / other / sub / "model.safetensors"
            ).read_bytes(), (other, sub)
        assert (tmp_path / "a" / "curves.parquet").read_bytes() == (
            tmp_path / other / "curves.parquet"
        ).read_bytes()
    assert again["final_loss"] == full["final_loss"]


def test_checkpoint_of_another_run_is_refused(tiny_model_dir: Path, examples11: Path, tmp_path: Path) -> None:
    params = make_params([11])

    def kill(row: dict) -> None:
        raise Killed

    with pytest.raises(Killed):
        distill(params, examples11, tiny_model_dir, tmp_path / "a", on_step=lambda r: r["step"] == 2 and kill(r))
    with pytest.raises(ValueError, match="another run"):
        distill(make_params([11], lr=2e-2), examples11, tiny_model_dir, tmp_path / "a")


def test_two_rounds_carry_optimizer_and_schedule(tiny_model_dir: Path, examples11: Path, tmp_path: Path) -> None:
    examples7 = make_examples(tiny_model_dir, tmp_path / "examples7.parquet", 7, seed=1)
    sizes = [11, 7]
    cfg = make_params(sizes)["distill"]
    n1 = steps_in_round(11, cfg["batch_size"], cfg["grad_accum"], cfg["epochs"])
    n2 = steps_in_round(7, cfg["batch_size"], cfg["grad_accum"], cfg["epochs"])
    total = total_optimizer_steps({"examples_per_round": sizes}, cfg["batch_size"], cfg["grad_accum"], cfg["epochs"])
    assert total == n1 + n2

    r1 = distill(make_params(sizes, 1), examples11, tiny_model_dir, tmp_path / "r1")
    with pytest.raises(ValueError, match="teacher_dir and state_dir"):
        distill(make_params(sizes, 2), examples7, tmp_path / "r1" / "student", tmp_path / "x")
    r2 = distill(
        make_params(sizes, 2), examples7, tmp_path / "r1" / "student", tmp_path / "r2",
        teacher_dir=tmp_path / "r1" / "teacher", state_dir=tmp_path / "r1" / "state",
    )
    assert (r1["global_step"], r2["global_step"], r2["total_steps"]) == (n1, n1 + n2, total)

    c1 = pq.read_table(tmp_path / "r1" / "curves.parquet").to_pylist()
    c2 = pq.read_table(tmp_path / "r2" / "curves.parquet").to_pylist()
    warm = warmup_steps(total, cfg["warmup_ratio"])
    lrs = [row["lr"] for row in c1 + c2]
    assert lrs == pytest.approx([cfg["lr"] * lr_factor(g, total, warm) for g in range(total)], rel=1e-12)
    assert c2[0]["lr"] == pytest.approx(cfg["lr"] * lr_factor(n1, total, warm), rel=1e-12)
    assert [row["step"] for row in c1 + c2] == list(range(1, total + 1))
    assert {row["round"] for row in c2} == {2}

    opt = torch.load(tmp_path / "r2" / "state" / "optimizer.pt", weights_only=False)
    steps = {float(s["step"]) for s in opt["state"].values()}
    assert steps == {float(n1 + n2)}  # AdamW moments carried over from round 1
    state = json.loads((tmp_path / "r2" / "state" / TRAINER_STATE).read_text())
    assert (state["global_step"], state["rounds_done"]) == (n1 + n2, 2)
    # round 2's teacher continued from round 1's teacher, not from round 1's student
    t1, s1 = weights(tmp_path / "r1" / "teacher"), weights(tmp_path / "r1" / "student")
    assert not all(torch.equal(t1[k], s1[k]) for k in t1)
    with pytest.raises(ValueError, match="state after round"):
        distill(
            make_params(sizes, 2), examples7, tmp_path / "r2" / "student", tmp_path / "r3",
            teacher_dir=tmp_path / "r2" / "teacher", state_dir=tmp_path / "r2" / "state",
        )


def test_a_checkpoint_with_flipped_bits_is_refused(tiny_model_dir: Path, examples11: Path, tmp_path: Path) -> None:
    from caopd.store import ArtifactError

    params = make_params([11])

    def kill(row):
        raise Killed

    with pytest.raises(Killed):
        distill(params, examples11, tiny_model_dir, tmp_path / "a", on_step=lambda r: r["step"] == 3 and kill(r))
    optimizer = next((tmp_path / "a.work").glob("step-*/state/optimizer.pt"))
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0x01
    optimizer.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="optimizer.pt"):
        distill(params, examples11, tiny_model_dir, tmp_path / "a")


def test_rng_state_round_trips_through_a_tensors_only_load(tmp_path: Path) -> None:
    import random as pyrandom

    from caopd.training.state import capture_rng, restore_rng

    pyrandom.seed(3), np.random.seed(4), torch.manual_seed(5)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    expected = (pyrandom.random(), np.random.rand(), torch.rand(1).item())
    pyrandom.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (pyrandom.random(), np.random.rand(), torch.rand(1).item()) == expected
