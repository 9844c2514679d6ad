"""One prompt pass per rollout group equals the per-example path; the group plan; cached teacher.

Tolerances: hidden states ``atol = 1e-5`` (float32, different matmul shapes); summed loss
``rtol = 1e-5``; each student parameter's gradient ``rtol = 1e-4`` and ``atol = 1e-4 ×`` that
tensor's largest entry (a float32 sum over shared-prefix rows vs over repeated rows).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from caopd.rewrite import write_examples
from caopd.training.data import DistillExample, collate, load_examples
from caopd.training.distill import run_distill
from caopd.training.divergence import DivergenceSpec
from caopd.training.objective import StudentObjective
from caopd.training.prefix import collate_groups, model_inputs
from caopd.training.state import load_causal_lm
from caopd.training.steps import prompt_groups, round_group_plan
from caopd.training.teacher_states import TeacherStates, teacher_hidden_states

K_OF_GROUP = (3, 1, 4)  # rollouts of each prompt (unequal on purpose)


def group_rows(n_prompts: int, k: int | tuple[int, ...], vocab: int, seed: int = 0) -> list[dict]:
    """Rewrite-stage rows: per prompt one student and one teacher prompt, k completions."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_prompts):
        student = [rng.randrange(4, vocab) for _ in range(rng.randint(2, 9))]
        teacher = [rng.randrange(4, vocab) for _ in range(rng.randint(5, 14))]
        for s in range(k[p] if isinstance(k, tuple) else k):
            completion = [rng.randrange(4, vocab) for _ in range(rng.randint(1, 8))]
            rows.append({
                "prompt_id": f"q{p:02d}", "sample_index": s,
                "student_input_ids": student + completion, "student_prompt_len": len(student),
                "teacher_input_ids": teacher + completion, "teacher_prompt_len": len(teacher),
                "completion_len": len(completion), "p_acc": rng.random(),
                "stated_confidence": rng.random(), "correct": True, "rewritten": True,
            })
    return rows


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path):
    student, teacher = load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model, scale in ((student, 3.0), (teacher, 3.0)):  # sharper than the init
            for param in model.parameters():
                if param.dim() > 1:
                    param.mul_(scale).add_(torch.randn(param.shape, generator=gen) * 0.2)
    return student, teacher


def examples_of(tmp_path: Path, rows: list[dict]) -> list[DistillExample]:
    return load_examples(write_examples(rows, tmp_path / "examples.parquet"))


def test_groups_share_one_prefix_row(tiny_model_dir: Path, tmp_path: Path) -> None:
    examples = examples_of(tmp_path, group_rows(3, K_OF_GROUP, 200))
    batch = collate_groups(examples, skip_first_tokens=2)
    for inputs in (batch.student_inputs, batch.teacher_inputs):
        assert inputs.prefix_ids.shape[0] == 3
        assert inputs.group.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    plain = collate(examples, skip_first_tokens=2)
    assert torch.equal(batch.weights, plain.weights) and batch.n_loss_tokens == plain.n_loss_tokens


@pytest.mark.parametrize("skip", [0, 2])
def test_hidden_states_equal_the_per_example_path(models, tmp_path: Path, skip: int) -> None:
    student, teacher = models
    examples = examples_of(tmp_path, group_rows(3, K_OF_GROUP, student.config.vocab_size))
    grouped, plain = collate_groups(examples, skip), collate(examples, skip)
    with torch.no_grad():
        for model, role in ((student, 0), (teacher, 1)):
            got = model_inputs(grouped)[role].hidden(model.base_model)
            want = model_inputs(plain)[role].hidden(model.base_model)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_loss_and_gradients_equal_the_per_example_path(models, tmp_path: Path, kind: str) -> None:
    """Gradients flow through the shared prefix: every student parameter's gradient matches."""
    student, teacher = models
    examples = examples_of(tmp_path, group_rows(3, K_OF_GROUP, student.config.vocab_size))
    objective = StudentObjective(student, DivergenceSpec(kind, 0.3), chunk_size=16)
    head = teacher.get_output_embeddings()
    params = list(student.parameters())
    results = []
    for batch in (collate_groups(examples, 1), collate(examples, 1)):
        t_hidden = teacher_hidden_states(teacher, batch)
        loss, stats = objective(model_inputs(batch)[0], t_hidden, head.weight, head.bias,
                                batch.weights)
        results.append((loss, stats, torch.autograd.grad(loss, params)))
    (loss, stats, grads), (want_loss, want_stats, want_grads) = results
    assert want_loss.item() > 1e-2
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(stats.entropy_sum, want_stats.entropy_sum, rtol=1e-5, atol=0)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_group_plan_packs_whole_groups() -> None:
    ids = [f"q{i // 4}" for i in range(40)]  # 10 groups of 4
    groups = prompt_groups(ids)
    plan = round_group_plan(groups, batch_size=8, grad_accum=2, epochs=2, seed=5)
    assert len(plan) == 5  # ceil(ceil(40 / 8) * 2 / 2), as the example plan
    micro = [m for step in plan for m in step]
    for m in micro:
        assert len(m) == 8
        assert all(len({ids[i] for i in m[j : j + 4]}) == 1 for j in range(0, 8, 4))
    for epoch in (micro[:5], micro[5:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(40))
    assert not np.array_equal(np.concatenate(micro[:5]), np.concatenate(micro[5:]))
    big = round_group_plan(prompt_groups(["a"] * 5 + ["b"] * 2), batch_size=4, grad_accum=1,
                           epochs=1, seed=0)
    assert sorted(len(m) for step in big for m in step) == [2, 5]


def test_frozen_teacher_states_equal_a_fresh_teacher_pass(models, tmp_path: Path) -> None:
    student, teacher = models
    examples = examples_of(tmp_path, group_rows(3, K_OF_GROUP, teacher.config.vocab_size))

    class CPU:
        device = torch.device("cpu")

        @staticmethod
        def autocast():
            return torch.autocast("cpu", enabled=False)

    states = TeacherStates()
    states.precompute(examples, [7, 0, 3, 5, 1], teacher, CPU(), collate_groups, batch_size=2)
    assert sorted(states.states) == [0, 1, 3, 5, 7]
    keys = (5, 0, 7)
    batch = collate([examples[k] for k in keys], 3)
    got = states.get(keys, model_inputs(batch)[1], teacher, CPU())
    torch.testing.assert_close(got, teacher_hidden_states(teacher, batch), atol=1e-5, rtol=0)


def test_grouped_round_trains_like_the_example_round(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One micro-batch holding every example: both batchings see the same batch (permuted), so
    the same loss, gradient and updated student, two epochs with the frozen teacher cached."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_model_dir).vocab_size
    path = write_examples(group_rows(4, 3, vocab, seed=3), tmp_path / "examples.parquet")
    distill = {
        "rounds": 1, "schedule": "rounds", "refresh_every": 1, "window_mix": False, "divergence": "reverse_kl",
        "jsd_beta": 0.5, "teacher": "frozen", "ema_weight": 0.01, "skip_first_tokens": 1,
        "lr": 1e-2, "weight_decay": 0.0, "epochs": 2, "batch_size": 12, "grad_accum": 1,
        "warmup_ratio": 0.0, "max_grad_norm": 1.0, "chunk_size": 16, "checkpoint_every": 50,
    }
    rows, students = [], []
    for batching in ("examples", "prompt_groups"):
        params = {"distill": dict(distill, batching=batching), "round": 1,
                  "schedule": {"rounds": 1, "examples_per_round": [12]}}
        out = tmp_path / batching
        summary = run_distill(params, examples_path=path, student_dir=tiny_model_dir,
                              teacher_dir=None, state_dir=None, out=out, work_dir=None, seed=2)
        assert summary["steps"] == 2
        import pyarrow.parquet as pq

        rows.append(pq.read_table(out / "curves.parquet").to_pylist())
        students.append(load_causal_lm(out / "student").state_dict())
    # the teacher starts as the student, so the divergence is small (~1e-3) and float32
    # cancellation limits the agreement of the loss to ~1e-5 relative
    for a, b in zip(*rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    # AdamW moves every weight by up to lr = 1e-2 per step whatever its gradient's size (m/√v), so
    # float-level gradient differences of near-zero entries show up at up to 1% of one step
    for name, tensor in students[0].items():
        torch.testing.assert_close(students[1][name], tensor, rtol=0, atol=1e-4)
