"""The chunked distillation loss equals the vanilla full-logits loss; masks and accumulation.

Tolerance of "equal" throughout: the float32 loss and gradients against a float64 full-logit
reference, ``atol = rtol = 1e-5``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from caopd.training.divergence import DivergenceSpec, token_divergence
from caopd.training.logit_transform import IDENTITY, LogitTransform
from caopd.training.loss import chunked_divergence_loss, completion_loss_mask, normalise_by_tokens

N, H, HT, V = 7, 5, 6, 11


def make_inputs(seed: int = 0, dtype: torch.dtype = torch.float32, bias: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {
        "student_hidden": torch.randn(N, H, generator=gen).to(dtype).requires_grad_(),
        "teacher_hidden": torch.randn(N, HT, generator=gen).to(dtype).requires_grad_(),
        "student_head": torch.randn(V, H, generator=gen).to(dtype).requires_grad_(),
        "teacher_head": torch.randn(V, HT, generator=gen).to(dtype).requires_grad_(),
        "weights": torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0, 1.0, 0.5]),
    }
    if bias:
        out["student_bias"] = torch.randn(V, generator=gen).to(dtype).requires_grad_()
        out["teacher_bias"] = torch.randn(V, generator=gen).to(dtype)
    return out


def reference_loss(
    x: dict, kind: str, beta: float = 0.5, transform: LogitTransform = IDENTITY
) -> torch.Tensor:
    """Vanilla, in float64: full N×V logits, the family's transform, then the per-position
    divergence, weighted and summed."""
    s_logits = F.linear(x["student_hidden"].double(), x["student_head"].double(),
                        None if "student_bias" not in x else x["student_bias"].double())
    t_logits = F.linear(x["teacher_hidden"].double(), x["teacher_head"].double(),
                        None if "teacher_bias" not in x else x["teacher_bias"].double())
    s_logits, t_logits = transform.apply(s_logits), transform.apply(t_logits)
    return (x["weights"].double() * token_divergence(s_logits, t_logits, kind, beta)).sum()


def grads(x: dict, loss: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [x[n] for n in names]))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "kl_mix"])
@pytest.mark.parametrize("chunk_size", [1, 3, N, N + 5])
def test_chunked_equals_vanilla_loss_and_gradients(kind: str, chunk_size: int) -> None:
    x = make_inputs(bias=chunk_size == 3)
    names = ["student_hidden", "student_head"] + (["student_bias"] if "student_bias" in x else [])
    loss, stats = chunked_divergence_loss(divergence=DivergenceSpec(kind, 0.3), chunk_size=chunk_size, **x)
    assert loss.dtype == torch.float32 and loss.shape == ()
    ref = reference_loss(x, kind, beta=0.3)
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(x, loss, names), grads(x, ref, names)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats.divergence_sum.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    assert not stats.divergence_sum.requires_grad


@pytest.mark.parametrize(("lam", "kind"), [(0.0, "forward_kl"), (1.0, "reverse_kl")])
def test_chunked_kl_mix_at_its_ends_is_the_kl(lam: float, kind: str) -> None:
    """KL mix at λ = 0 is forward KL and at λ = 1 reverse KL: the same loss and gradients."""
    x = make_inputs()
    names = ["student_hidden", "student_head"]
    mixed, _ = chunked_divergence_loss(divergence=DivergenceSpec("kl_mix", lam), chunk_size=3, **x)
    plain, _ = chunked_divergence_loss(divergence=DivergenceSpec(kind, 0.5), chunk_size=3, **x)
    torch.testing.assert_close(mixed, plain, atol=1e-6, rtol=1e-6)
    for got, want in zip(grads(x, mixed, names), grads(x, plain, names)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_stats_entropy_and_counts() -> None:
    x = make_inputs()
    _, stats = chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=3, **x)
    logp = F.linear(x["student_hidden"], x["student_head"]).detach().log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    kept = x["weights"] != 0
    assert stats.n_positions.item() == 5
    assert stats.weight_sum.item() == pytest.approx(5.5)
    torch.testing.assert_close(stats.mean_entropy, entropy[kept].mean(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.mean_divergence, stats.divergence_sum / 5.5)


def test_masked_positions_get_exactly_zero_gradient() -> None:
    x = make_inputs()
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("reverse_kl"), chunk_size=2, **x)
    loss.backward()
    masked = x["weights"] == 0
    assert torch.equal(x["student_hidden"].grad[masked], torch.zeros(int(masked.sum()), H))
    assert (x["student_hidden"].grad[~masked].abs().sum(-1) > 0).all()


def test_teacher_receives_no_gradient() -> None:
    x = make_inputs(bias=True)
    x["teacher_bias"].requires_grad_()
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("jsd"), chunk_size=3, **x)
    loss.backward()
    assert x["teacher_hidden"].grad is None
    assert x["teacher_head"].grad is None
    assert x["teacher_bias"].grad is None
    assert x["student_head"].grad is not None


def test_backward_neither_keeps_nor_recomputes_logits() -> None:
    """The gradients are made in the forward: nothing is saved for backward and the backward
    runs no matmul (it only scales the finished gradients)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
                self.calls += 1
            return func(*args, **(kwargs or {}))

    x = make_inputs(bias=True)
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), CountMatmuls() as fwd:
        loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("jsd"), chunk_size=2, **x)
    assert fwd.calls > 0
    assert saved == []
    with CountMatmuls() as bwd:
        loss.backward()
    assert bwd.calls == 0
    assert x["student_head"].grad is not None and x["student_bias"].grad is not None


def test_second_backward_raises() -> None:
    x = make_inputs()
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=3, **x)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_grad_output_scales_the_gradients() -> None:
    x = make_inputs()
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("reverse_kl"), chunk_size=3, **x)
    (once,) = torch.autograd.grad(loss, [x["student_head"]])
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("reverse_kl"), chunk_size=3, **x)
    (scaled,) = torch.autograd.grad(-2.5 * loss, [x["student_head"]])
    torch.testing.assert_close(scaled, -2.5 * once)


def test_weight_zero_positions_contribute_nothing() -> None:
    """Changing the hidden states of weight-0 positions (even to NaN) changes nothing."""
    x = make_inputs()
    loss, stats = chunked_divergence_loss(divergence=DivergenceSpec("jsd"), chunk_size=2, **x)
    names = ["student_hidden", "student_head"]
    want = grads(x, loss, names)
    masked = x["weights"] == 0
    junk = dict(x)
    for name in ("student_hidden", "teacher_hidden"):
        value = x[name].detach().clone()
        value[masked] = float("nan")
        junk[name] = value.requires_grad_()
    junk_loss, junk_stats = chunked_divergence_loss(divergence=DivergenceSpec("jsd"), chunk_size=2, **junk)
    assert torch.equal(junk_loss.detach(), loss.detach())
    assert torch.equal(junk_stats.entropy_sum, stats.entropy_sum)
    for got, expected in zip(grads(junk, junk_loss, names), want):
        assert torch.equal(got, expected)


def test_no_grad_gives_the_same_loss_and_stats() -> None:
    x = make_inputs(bias=True)
    loss, stats = chunked_divergence_loss(divergence=DivergenceSpec("jsd"), chunk_size=3, **x)
    with torch.no_grad():
        plain, plain_stats = chunked_divergence_loss(divergence=DivergenceSpec("jsd"), chunk_size=3, **x)
    assert not plain.requires_grad
    torch.testing.assert_close(plain, loss.detach())
    torch.testing.assert_close(plain_stats.entropy_sum, stats.entropy_sum)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize(
    "transform",
    [LogitTransform(softcap=2.0), LogitTransform(scale=0.25), LogitTransform(scale=3.0, softcap=1.5)],
)
def test_logit_transform_equals_transformed_full_logits(kind: str, transform: LogitTransform) -> None:
    x = make_inputs(bias=True)
    names = ["student_hidden", "student_head", "student_bias"]
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec(kind, 0.3), chunk_size=3, transform=transform, **x)
    ref = reference_loss(x, kind, beta=0.3, transform=transform)
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(x, loss, names), grads(x, ref, names)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_inputs_and_autocast_compute_in_float32() -> None:
    x = make_inputs(dtype=torch.bfloat16)
    loss, _ = chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=3, **x)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference_loss(x, "forward_kl"), atol=1e-5, rtol=1e-5)
    x32 = make_inputs()
    plain, _ = chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=3, **x32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast, _ = chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=3, **x32)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain)


def test_no_positions_gives_connected_zero() -> None:
    x = make_inputs()
    x["student_hidden"] = x["student_hidden"][:0].detach().requires_grad_()
    x["teacher_hidden"] = x["teacher_hidden"][:0]
    x["weights"] = x["weights"][:0]
    loss, stats = chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=4, **x)
    assert loss.item() == 0.0 and stats.n_positions.item() == 0
    assert stats.mean_entropy.item() == 0.0 and stats.mean_divergence.item() == 0.0
    loss.backward()
    assert torch.equal(x["student_head"].grad, torch.zeros(V, H))


def test_bad_arguments_raise() -> None:
    x = make_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=0, **x)
    with pytest.raises(TypeError, match="DivergenceSpec"):
        chunked_divergence_loss(divergence="forward_kl", chunk_size=2, **x)
    bad = dict(x, weights=torch.ones(N + 1))
    with pytest.raises(ValueError, match="weights"):
        chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=2, **bad)
    bad = dict(x, teacher_head=torch.randn(V + 1, HT))
    with pytest.raises(ValueError, match="vocabulary"):
        chunked_divergence_loss(divergence=DivergenceSpec("forward_kl"), chunk_size=2, **bad)


def test_completion_loss_mask_skips_first_tokens_per_row() -> None:
    completion = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 1],  # left padding / long prompt: completion starts at 2
            [1, 1, 1, 1, 1, 0, 0],  # right padding: completion starts at 0
            [0, 0, 0, 0, 1, 1, 0],  # only 2 completion tokens: all skipped
            [0, 0, 0, 0, 0, 0, 0],
        ]
    )
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(completion_loss_mask(completion, skip_first=3), expected)
    assert torch.equal(completion_loss_mask(completion, skip_first=0), completion)
    as_bool = completion_loss_mask(completion.bool(), skip_first=3)
    assert as_bool.dtype == torch.bool and torch.equal(as_bool, expected.bool())
    with pytest.raises(ValueError, match="skip_first"):
        completion_loss_mask(completion, skip_first=-1)
    with pytest.raises(ValueError, match="completion_mask"):
        completion_loss_mask(completion[0], skip_first=1)


def test_accumulation_of_unequal_micro_batches_equals_big_batch() -> None:
    gen = torch.Generator().manual_seed(7)
    head = torch.randn(V, H, generator=gen, dtype=torch.float64, requires_grad=True)
    t_head = torch.randn(V, H, generator=gen, dtype=torch.float64)
    hidden = torch.randn(9, H, generator=gen, dtype=torch.float64)
    t_hidden = torch.randn(9, H, generator=gen, dtype=torch.float64)
    weights = torch.ones(9, dtype=torch.float64)
    weights[[0, 5]] = 0.0  # 7 loss tokens: 2 in the first micro-batch, 5 in the second
    n_global = int(weights.sum())

    def sum_loss(rows: slice) -> torch.Tensor:
        loss, _ = chunked_divergence_loss(
            hidden[rows], t_hidden[rows], head, t_head, weights[rows], DivergenceSpec("forward_kl"),
            chunk_size=2,
        )
        return loss

    big = sum_loss(slice(0, 9)) / n_global
    (big_grad,) = torch.autograd.grad(big, [head])

    for micro in (slice(0, 3), slice(3, 9)):
        normalise_by_tokens(sum_loss(micro), n_global).backward()
    torch.testing.assert_close(head.grad, big_grad)

    # Per-micro-batch means, averaged, weight the tokens differently: not the same gradient.
    head.grad = None
    for micro, count in ((slice(0, 3), 2), (slice(3, 9), 5)):
        (sum_loss(micro) / count / 2).backward()
    assert not torch.allclose(head.grad, big_grad)

    # Two data-parallel ranks whose gradients are averaged, with a tensor token count.
    rank_grads = []
    for micro in (slice(0, 3), slice(3, 9)):
        loss = normalise_by_tokens(sum_loss(micro), torch.tensor(n_global), world_size=2)
        rank_grads.append(torch.autograd.grad(loss, [head])[0])
    torch.testing.assert_close((rank_grads[0] + rank_grads[1]) / 2, big_grad)


def test_normalise_by_tokens_edge_cases() -> None:
    zero = torch.zeros((), requires_grad=True)
    assert normalise_by_tokens(zero, 0).item() == 0.0
    assert normalise_by_tokens(zero, torch.tensor(0)).item() == 0.0
    assert normalise_by_tokens(torch.tensor(3.0), 0.5).item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="n_tokens"):
        normalise_by_tokens(zero, -1)
    with pytest.raises(ValueError, match="world_size"):
        normalise_by_tokens(zero, 4, world_size=0)
