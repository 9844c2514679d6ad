"""Identities of the per-position divergences (caopd.training.divergence), checked by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from caopd.training.divergence import DIVERGENCES, DivergenceSpec, get_divergence, token_divergence

KINDS = ["forward_kl", "reverse_kl", "jsd", "kl_mix"]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def logits_of(p: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(x) for x in p], dtype=torch.float64)


def test_registry_names_and_metadata() -> None:
    assert set(DIVERGENCES) == set(KINDS)
    assert [d.name for d in DIVERGENCES.values() if d.reference_default] == ["forward_kl"]
    assert [d.name for d in DIVERGENCES.values() if d.uses_beta] == ["jsd", "kl_mix"]
    assert not any(d.higher_is_better for d in DIVERGENCES.values())


@pytest.mark.parametrize("kind", KINDS)
def test_identical_logits_give_zero(kind: str) -> None:
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    out = token_divergence(logits, logits.clone(), kind)
    assert out.shape == (2, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_kl_by_hand_symmetric_pair() -> None:
    # p_T = [.5,.25,.25], p_S = [.25,.5,.25]: both KLs are .5 ln 2 - .25 ln 2 = .25 ln 2.
    p_t, p_s = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)
    assert expected == pytest.approx(0.25 * math.log(2))
    s, t = logits_of(p_s), logits_of(p_t)
    assert token_divergence(s, t, "forward_kl").item() == pytest.approx(expected, abs=1e-12)
    assert token_divergence(s, t, "reverse_kl").item() == pytest.approx(expected, abs=1e-12)


def test_forward_and_reverse_by_hand_asymmetric() -> None:
    p_t, p_s = [0.8, 0.1, 0.1], [0.4, 0.4, 0.2]
    forward = 0.8 * math.log(0.8 / 0.4) + 0.1 * math.log(0.1 / 0.4) + 0.1 * math.log(0.1 / 0.2)
    reverse = 0.4 * math.log(0.4 / 0.8) + 0.4 * math.log(0.4 / 0.1) + 0.2 * math.log(0.2 / 0.1)
    s, t = logits_of(p_s), logits_of(p_t)
    got_forward = token_divergence(s, t, "forward_kl").item()
    got_reverse = token_divergence(s, t, "reverse_kl").item()
    assert got_forward == pytest.approx(forward, abs=1e-12)  # = 0.5 ln 2 ≈ 0.3466
    assert got_reverse == pytest.approx(reverse, abs=1e-12)  # = 0.6 ln 2 ≈ 0.4159
    assert abs(got_forward - got_reverse) > 0.05


def test_logits_are_shift_invariant_and_float32_inputs_work() -> None:
    p_t, p_s = [0.8, 0.1, 0.1], [0.4, 0.4, 0.2]
    s = (logits_of(p_s) + 3.0).float()
    t = (logits_of(p_t) - 7.0).float()
    assert token_divergence(s, t, "forward_kl").item() == pytest.approx(kl(p_t, p_s), abs=1e-6)


def test_jsd_half_by_hand_symmetric_and_bounded() -> None:
    p_t, p_s = [0.8, 0.1, 0.1], [0.4, 0.4, 0.2]
    m = [(a + b) / 2 for a, b in zip(p_t, p_s)]
    expected = 0.5 * kl(p_t, m) + 0.5 * kl(p_s, m)
    s, t = logits_of(p_s), logits_of(p_t)
    assert token_divergence(s, t, "jsd", beta=0.5).item() == pytest.approx(expected, abs=1e-12)
    assert token_divergence(t, s, "jsd", beta=0.5).item() == pytest.approx(expected, abs=1e-12)
    # Nearly disjoint supports approach, but never exceed, log 2.
    far_s = torch.tensor([[40.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    far_t = torch.tensor([[0.0, 40.0, 0.0], [0.0, 0.0, 0.0]])
    out = token_divergence(far_s, far_t, "jsd", beta=0.5)
    assert out[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert (out <= math.log(2) + 1e-7).all()


def test_jsd_general_beta_by_hand() -> None:
    beta = 0.3
    p_t, p_s = [0.8, 0.1, 0.1], [0.4, 0.4, 0.2]
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
    expected = beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    got = token_divergence(logits_of(p_s), logits_of(p_t), "jsd", beta=beta).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_jsd_scaled_limits_are_the_kls() -> None:
    # JSD_b / b -> KL(p_T||p_S) as b -> 0 (error ~ b*chi2/2);
    # JSD_b / (1-b) -> KL(p_S||p_T) as b -> 1.
    p_t, p_s = [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]
    s, t = logits_of(p_s), logits_of(p_t)
    b = 1e-5
    near_zero = token_divergence(s, t, "jsd", beta=b).item() / b
    near_one = token_divergence(s, t, "jsd", beta=1 - b).item() / b
    assert near_zero == pytest.approx(kl(p_t, p_s), rel=1e-4)
    assert near_one == pytest.approx(kl(p_s, p_t), rel=1e-4)
    chi2 = sum((a - c) ** 2 / c for a, c in zip(p_t, p_s))
    b = 1e-3
    first_order = token_divergence(s, t, "jsd", beta=b).item() / b
    assert first_order == pytest.approx(kl(p_t, p_s) - b * chi2 / 2, rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5, float("nan"), True])
def test_jsd_beta_outside_open_interval_raises(beta: float) -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="beta"):
        token_divergence(x, x, "jsd", beta=beta)


def test_kls_ignore_beta() -> None:
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    at_zero = token_divergence(x, y, "forward_kl", beta=0.0)
    torch.testing.assert_close(at_zero, token_divergence(x, y, "forward_kl", beta=1.0))


def test_bad_kind_and_shapes_raise() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="kind"):
        token_divergence(x, x, "kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        token_divergence(x, torch.zeros(2, 4), "forward_kl")
    with pytest.raises(ValueError, match="kind"):
        get_divergence("tvd")


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_inputs_compute_in_float32(kind: str) -> None:
    gen = torch.Generator().manual_seed(3)
    s = (4 * torch.randn(3, 5, 50, generator=gen)).bfloat16()
    t = (4 * torch.randn(3, 5, 50, generator=gen)).bfloat16()
    out = token_divergence(s, t, kind, beta=0.3)
    assert out.dtype == torch.float32
    reference = token_divergence(s.double(), t.double(), kind, beta=0.3)
    assert reference.dtype == torch.float64
    torch.testing.assert_close(out.double(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_student_only(kind: str) -> None:
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(3, 6, generator=gen, requires_grad=True)
    t = torch.randn(3, 6, generator=gen, requires_grad=True)
    token_divergence(s, t, kind).sum().backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_forward_kl_gradient_is_p_student_minus_p_teacher() -> None:
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    token_divergence(s, t, "forward_kl").sum().backward()
    torch.testing.assert_close(s.grad, s.detach().softmax(-1) - t.softmax(-1))


def test_teacher_zero_probability_entries_count_as_zero() -> None:
    # A -inf teacher logit is p_T = 0 there: forward KL equals the KL over the remaining entries.
    s = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, float("-inf"), 2.0], dtype=torch.float64)
    p_t = t.softmax(-1).tolist()
    p_s = s.softmax(-1).tolist()
    out = token_divergence(s, t, "forward_kl")
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(kl(p_t, p_s), abs=1e-12)
    assert torch.isfinite(token_divergence(s, t, "jsd", beta=0.5))


def test_kl_mix_at_zero_and_one_is_exactly_forward_and_reverse() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    assert torch.equal(token_divergence(s, t, "kl_mix", 0.0), token_divergence(s, t, "forward_kl"))
    assert torch.equal(token_divergence(s, t, "kl_mix", 1.0), token_divergence(s, t, "reverse_kl"))


def test_kl_mix_by_hand() -> None:
    p, q = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]
    got = token_divergence(logits_of(q), logits_of(p), "kl_mix", 0.25).item()
    assert got == pytest.approx(0.25 * kl(q, p) + 0.75 * kl(p, q), rel=1e-12)


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), True])
def test_kl_mix_lambda_outside_the_unit_interval_raises(lam: float) -> None:
    with pytest.raises(ValueError, match="kl_mix lambda"):
        get_divergence("kl_mix", lam)


@pytest.mark.parametrize(
    ("kind", "beta", "needle"),
    [("tvd", 0.5, "kind"), ("jsd", 0.0, "jsd beta"), ("jsd", 1.0, "jsd beta"),
     ("kl_mix", 1.5, "kl_mix lambda")],
)
def test_divergence_spec_is_checked_at_construction(kind: str, beta: float, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        DivergenceSpec(kind, beta)  # type: ignore[arg-type]


def test_divergence_spec_takes_the_ends_where_they_are_defined() -> None:
    assert DivergenceSpec("kl_mix", 0.0).beta == 0.0 and DivergenceSpec("kl_mix", 1.0).beta == 1.0
    assert DivergenceSpec("forward_kl", 7.0).kind == "forward_kl"  # the KLs ignore beta
    assert DivergenceSpec("jsd") == DivergenceSpec("jsd", 0.5)
    with pytest.raises(AttributeError):
        DivergenceSpec("jsd").beta = 0.3  # type: ignore[misc]


def _distill_config(**changes: object):
    from caopd.config import resolve
    from caopd.training.config import DistillConfig

    params = resolve({"variants": {"v": {"distill": changes}}})["variants"]["v"]["distill"]
    runtime = ("accelerate_config", "gpu_memory_gb", "processes")  # job resources, not the config
    return DistillConfig.from_params({k: v for k, v in params.items() if k not in runtime})


def test_distill_config_builds_the_divergence_with_its_parameter() -> None:
    assert _distill_config(divergence="jsd", jsd_beta=0.3).divergence_spec == DivergenceSpec("jsd", 0.3)
    mix = _distill_config(divergence="kl_mix", kl_mix_lambda=0.25, jsd_beta=0.3)
    assert mix.divergence_spec == DivergenceSpec("kl_mix", 0.25)
    with pytest.raises(ValueError, match="kl_mix lambda"):
        dataclasses.replace(mix, kl_mix_lambda=1.5)  # checked when the config is built
