"""The sampled-token and vOPD estimators (caopd.training.vopd) by identities derivable by hand:
over a tiny vocabulary, the expectation of their gradients over every token, weighted by the
student's q, is the reverse-KL gradient; vOPD's variance over sampled tokens is lower than the
plain estimator's; the top-k baseline at k = V is the full one."""

from __future__ import annotations

import pytest
import torch

from caopd.training.divergence import token_divergence
from caopd.training.vopd import sampled_token_loss, vopd_baseline

V = 6


def _logits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=g, dtype=torch.float64) * 2, torch.randn(V, generator=g, dtype=torch.float64) * 2


def _grad_for_token(student: torch.Tensor, teacher: torch.Tensor, y: int, estimator: str, top_k: int = 0):
    s = student.clone().requires_grad_(True)
    sampled_token_loss(s, teacher, torch.tensor(y), estimator=estimator, top_k=top_k).backward()
    return s.grad


@pytest.mark.parametrize("estimator", ["sampled_token", "vopd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_expected_gradient_is_the_reverse_kl_gradient(estimator, seed):
    student, teacher = _logits(seed)
    q = torch.softmax(student, -1)
    expected = sum(q[y] * _grad_for_token(student, teacher, y, estimator) for y in range(V))
    s = student.clone().requires_grad_(True)
    token_divergence(s, teacher, "reverse_kl").backward()
    torch.testing.assert_close(expected, s.grad, rtol=1e-10, atol=1e-12)


def test_the_top_k_baseline_over_the_whole_vocabulary_is_the_full_one():
    student, teacher = _logits(3)
    torch.testing.assert_close(vopd_baseline(student, teacher, top_k=V), vopd_baseline(student, teacher))
    # and the full baseline is the reverse KL itself
    torch.testing.assert_close(vopd_baseline(student, teacher), token_divergence(student, teacher, "reverse_kl"))


def test_a_top_k_baseline_keeps_the_estimate_unbiased():
    student, teacher = _logits(4)
    q = torch.softmax(student, -1)
    expected = sum(q[y] * _grad_for_token(student, teacher, y, "vopd", top_k=2) for y in range(V))
    s = student.clone().requires_grad_(True)
    token_divergence(s, teacher, "reverse_kl").backward()
    torch.testing.assert_close(expected, s.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vopd_has_lower_variance_over_sampled_tokens(seed):
    """Measured over 2,000 draws of y ~ q at each of 32 positions of a distillation-like batch
    (teacher logits = student logits + noise): the gradient's variance summed over coordinates
    and positions. Not at every single position (the KL is the q-mean of the log-ratio, not the
    variance-optimal baseline), so the batch is the unit, as in training."""
    g = torch.Generator().manual_seed(seed)
    students = torch.randn(32, V, generator=g, dtype=torch.float64)
    teachers = students + torch.randn(32, V, generator=g, dtype=torch.float64)
    total = {"sampled_token": 0.0, "vopd": 0.0}
    for student, teacher in zip(students, teachers):
        q = torch.softmax(student, -1)
        draws = torch.multinomial(q, 2000, replacement=True, generator=g)
        for estimator in total:
            grads = {y: _grad_for_token(student, teacher, y, estimator) for y in range(V)}
            total[estimator] += torch.stack([grads[int(y)] for y in draws]).var(dim=0).sum().item()
    assert total["vopd"] < 0.95 * total["sampled_token"], total    # exact ratios 0.81-0.87 here


def test_bad_arguments_are_named():
    student, teacher = _logits(0)
    with pytest.raises(ValueError, match="estimator='full'"):
        sampled_token_loss(student, teacher, torch.tensor(0), estimator="full")
    with pytest.raises(ValueError, match="top_k=7"):
        vopd_baseline(student, teacher, top_k=7)
