"""distill.estimator wired into the chunked loss (caopd.training.estimators): on sampled positions
the per-position loss of caopd.training.vopd, on rewritten positions the exact reverse KL, loss
and gradients; a hand-computed position; the batches' tokens and sampled flags; the rewrite's
sampled_len; config checks; and short distill runs with every estimator."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from caopd.completion import rewrite_completion_kept
from caopd.training.divergence import token_divergence
from caopd.training.estimators import check_estimator, chunked_estimator_loss
from caopd.training.logit_transform import IDENTITY, LogitTransform
from caopd.training.vopd import sampled_token_loss

N, H, HT, V = 7, 5, 6, 11
SAMPLED = torch.tensor([True, True, False, True, False, True, True])
WEIGHTS = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 0.5, 1.0], dtype=torch.float64)


def make_inputs(seed: int = 0, bias: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = {
        "student_hidden": torch.randn(N, H, generator=gen, dtype=torch.float64).requires_grad_(),
        "teacher_hidden": torch.randn(N, HT, generator=gen, dtype=torch.float64),
        "student_head": torch.randn(V, H, generator=gen, dtype=torch.float64).requires_grad_(),
        "teacher_head": torch.randn(V, HT, generator=gen, dtype=torch.float64),
        "weights": WEIGHTS,
        "tokens": torch.randint(0, V, (N,), generator=gen),
        "sampled": SAMPLED,
    }
    if bias:
        x["student_bias"] = torch.randn(V, generator=gen, dtype=torch.float64).requires_grad_()
        x["teacher_bias"] = torch.randn(V, generator=gen, dtype=torch.float64)
    return x


def reference(x: dict, estimator: str, top_k: int, transform: LogitTransform = IDENTITY):
    """Per position from full logits: vopd.py's loss where sampled, the reverse KL elsewhere."""
    s = transform.apply(F.linear(x["student_hidden"], x["student_head"], x.get("student_bias")))
    t = transform.apply(F.linear(x["teacher_hidden"], x["teacher_head"], x.get("teacher_bias")))
    per_position = torch.where(
        x["sampled"],
        sampled_token_loss(s, t, x["tokens"], estimator=estimator, top_k=top_k),
        token_divergence(s, t, "reverse_kl"),
    )
    return (x["weights"] * per_position).sum(), (x["weights"] * token_divergence(s, t, "reverse_kl")).sum()


@pytest.mark.parametrize("estimator,top_k", [("sampled_token", 0), ("vopd", 0), ("vopd", 3), ("vopd", V)])
@pytest.mark.parametrize("chunk_size", [1, 3, N + 5])
def test_sampled_positions_take_the_vopd_loss_rewritten_ones_the_reverse_kl(estimator, top_k, chunk_size):
    x = make_inputs(bias=chunk_size == 3)
    names = ["student_hidden", "student_head"] + (["student_bias"] if "student_bias" in x else [])
    loss, stats = chunked_estimator_loss(estimator=estimator, top_k=top_k, chunk_size=chunk_size, **x)
    ref_loss, ref_kl = reference(x, estimator, top_k)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.divergence_sum, ref_kl, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(loss, [x[n] for n in names])
    want = torch.autograd.grad(ref_loss, [x[n] for n in names])
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=name)
    assert stats.n_positions == 6 and float(stats.weight_sum) == float(WEIGHTS.sum())


def test_a_soft_capped_family_goes_through_the_transform():
    x = make_inputs(seed=1)
    cap = LogitTransform(softcap=2.0)
    loss, _ = chunked_estimator_loss(estimator="vopd", chunk_size=2, transform=cap, **x)
    ref_loss, _ = reference(x, "vopd", 0, cap)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(loss, x["student_hidden"])[0]
    torch.testing.assert_close(got, torch.autograd.grad(ref_loss, x["student_hidden"])[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("estimator", ["sampled_token", "vopd"])
def test_one_position_by_hand(estimator):
    """V = 3, logits = hidden (identity head): q uniform, p_T = (1/2, 1/4, 1/4), y = 0.
    Sampled: A = log p_T(0) − log q(0) = log 1.5 (+ KL for vOPD), loss −A·log(1/3) = A·log 3,
    ∂/∂z = A (q − e_0) = A (−2/3, 1/3, 1/3). Rewritten: KL(q‖p_T) and q ⊙ (log q − log p_T − KL)."""
    q, p = torch.full((3,), 1 / 3, dtype=torch.float64), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    kl = float((q * (q.log() - p.log())).sum())  # (log(2/3) + 2 log(4/3)) / 3
    assert kl == pytest.approx((math.log(2 / 3) + 2 * math.log(4 / 3)) / 3)
    advantage = math.log(1.5) + (kl if estimator == "vopd" else 0.0)
    hidden = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)  # z = 0: q uniform
    loss, stats = chunked_estimator_loss(
        hidden, p.log().expand(2, 3).clone(), torch.eye(3, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
        torch.tensor([0, 0]), torch.tensor([True, False]), estimator)
    assert loss.item() == pytest.approx(advantage * math.log(3) + kl, rel=1e-12)
    assert float(stats.divergence_sum) == pytest.approx(2 * kl, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(grad[0], advantage * torch.tensor([-2 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(grad[1], q * (q.log() - p.log() - kl))


def test_zero_weight_positions_get_no_gradient_and_bad_arguments_are_named():
    x = make_inputs(seed=2)
    loss, _ = chunked_estimator_loss(estimator="vopd", **x)
    assert torch.all(torch.autograd.grad(loss, x["student_hidden"])[0][0] == 0)
    with pytest.raises(ValueError, match="estimator='full_vocab'"):
        chunked_estimator_loss(estimator="full_vocab", **make_inputs())
    with pytest.raises(ValueError, match=r"vopd_top_k=12"):
        chunked_estimator_loss(estimator="vopd", top_k=V + 1, **make_inputs())
    with pytest.raises(ValueError, match="divergence 'reverse_kl'"):
        check_estimator("vopd", 0, "forward_kl")
    with pytest.raises(ValueError, match="vopd_top_k=4 needs distill.estimator 'vopd'"):
        check_estimator("sampled_token", 4, "reverse_kl")


def test_rewrite_records_where_the_sampled_ids_end(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sampled = tok("3 + 4 = 7\n<answer>B</answer>\nConfidence: 0.9", add_special_tokens=False)["input_ids"]
    ids, _, n = rewrite_completion_kept(tok, sampled, 0.25)
    assert ids[:n] == sampled[:n] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n:], skip_special_tokens=True).strip() == "Confidence: 0.25"
    capped, shortened, m = rewrite_completion_kept(tok, sampled, 0.25, max_length=len(ids) - 2)
    assert shortened and m < n and capped[:m] == sampled[:m] and len(capped) <= len(ids) - 2
    assert tok.decode(capped[m:], skip_special_tokens=True).strip() == "Confidence: 0.25"


# ---------------------------------------------------------------- the loop


def with_sampled_len(source: Path, path: Path, rewritten: int) -> Path:
    """The examples of ``source`` with a sampled_len column: the last ``rewritten`` ids written."""
    table = pq.read_table(source)
    lens = [max(0, c - rewritten) for c in table.column("completion_len").to_pylist()]
    pq.write_table(table.append_column("sampled_len", pa.array(lens, pa.int32())), path)
    return path


def test_batches_carry_tokens_and_sampled_flags(tiny_model_dir: Path, tmp_path: Path):
    from caopd.training.data import collate, load_examples
    from caopd.training.prefix import collate_groups
    from test_distill_loop import make_examples

    path = with_sampled_len(make_examples(tiny_model_dir, tmp_path / "a.parquet", 4), tmp_path / "b.parquet", 5)
    examples = load_examples(path, need_sampled_len=True)
    batch = collate(examples, skip_first_tokens=1)
    assert torch.equal(batch.tokens, batch.student_ids.flatten()[batch.student_positions + 1])
    want = torch.cat([torch.arange(ex.completion_len) < ex.completion_len - 5 for ex in examples])
    assert torch.equal(batch.sampled, want)
    grouped = collate_groups(examples, skip_first_tokens=1)
    assert torch.equal(grouped.tokens, batch.tokens) and torch.equal(grouped.sampled, want)
    with pytest.raises(ValueError, match="sampled_len"):
        load_examples(tmp_path / "a.parquet", need_sampled_len=True)


@pytest.mark.parametrize("estimator,extra", [
    ("full_vocab", {}), ("sampled_token", {}), ("vopd", {}), ("vopd", {"vopd_top_k": 8, "batching": "prompt_groups", "batch_size": 4}),
])
def test_a_short_distill_run_with_each_estimator(estimator, extra, tiny_model_dir: Path, tmp_path: Path):
    from safetensors.torch import load_file

    from test_distill_loop import distill, make_examples, make_params

    path = with_sampled_len(make_examples(tiny_model_dir, tmp_path / "a.parquet", 6), tmp_path / "b.parquet", 6)
    params = make_params([6], divergence="reverse_kl", estimator=estimator, epochs=1, grad_accum=1, **extra)
    summary = distill(params, path, tiny_model_dir, tmp_path / "out")
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "out/student/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
