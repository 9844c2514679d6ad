"""Sampled-token estimators of the reverse-KL gradient, plain and with vOPD's control variate.

On-policy distillation trains the student q toward the teacher p_T on the student's own tokens.
The full-vocabulary reverse KL at a position s_t,

    KL(q ‖ p_T)(s_t) = Σ_v q(v) (log q(v) − log p_T(v)),

has the gradient (using Σ_v q ∇log q = ∇Σ_v q = 0)

    ∇ KL = E_{y∼q} [ (log q(y) − log p_T(y)) · ∇ log q(y) ].

The **sampled-token estimator** (the policy-gradient form of OPD) replaces the expectation by
the token y_t the student sampled: loss ``−A_t · log q(y_t)`` with the advantage

    A_t = sg(log p_T(y_t) − log q(y_t))                         (plain)

whose gradient ``−A_t ∇log q(y_t)`` is an unbiased one-sample estimate of ∇KL. **vOPD**
(shared/PAPER.md, "vOPD") subtracts a baseline that does not depend on y_t: since
E_q[log p_T − log q] = −KL, it adds the closed-form KL back,

    A_t = sg(log p_T(y_t) − log q(y_t) + KL(q ‖ p_T)(s_t))      (vOPD)

so the advantage is centred; E_q[b · ∇log q] = b · ∇Σq = 0 keeps the estimator unbiased and the
variance drops. The baseline can be computed over the full vocabulary or over the student's
top-k tokens renormalised (``top_k``): any y-independent baseline keeps the estimate unbiased,
and at k = V the two are the same number.

These estimators apply to positions the student sampled. Rewritten confidence positions (the
CaOPD target tokens, written by the rewrite and not sampled by the student) have no sampled
token to weight, so a caller uses the exact full-vocabulary divergence there
(:mod:`caopd.training.divergence`).

Everything is computed in float32 at least; gradients flow to the student's log-probability of
the sampled token only (advantages and baselines are detached).
"""

from __future__ import annotations

import torch
from torch import Tensor

from caopd.training.divergence import compute_dtype


def vopd_baseline(student_logits: Tensor, teacher_logits: Tensor, top_k: int = 0) -> Tensor:
    """The control variate KL(q ‖ p_T)(s_t) per position, detached.

    Args:
        student_logits, teacher_logits: Tensor[..., V] of the same shape.
        top_k: 0 = the full vocabulary; k > 0 = the sum over the student's k most likely tokens
            with q renormalised over them, ``Σ_{v∈top-k} q̃(v) (log q(v) − log p_T(v))``
            (equal to the full KL when k = V).

    Returns:
        Tensor[...] (float32 or wider), no gradient.

    Raises:
        ValueError: shapes differ, or ``top_k`` is negative or larger than V.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} != teacher_logits "
                         f"{tuple(teacher_logits.shape)}")
    vocab = student_logits.shape[-1]
    if not 0 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k} must lie in [0, V={vocab}]")
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    with torch.no_grad():
        log_q = torch.log_softmax(student_logits.detach().to(dtype), dim=-1)
        log_p = torch.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
        ratio = log_q - log_p
        if top_k == 0:
            weights = log_q.exp()
        else:
            top = log_q.topk(top_k, dim=-1).indices
            weights = torch.zeros_like(log_q).scatter(-1, top, log_q.gather(-1, top).softmax(dim=-1))
        return torch.where(weights > 0, weights * ratio, torch.zeros_like(ratio)).sum(dim=-1)


def sampled_token_loss(student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, *,
                       estimator: str = "vopd", top_k: int = 0) -> Tensor:
    """Per-position loss ``−A_t · log q(y_t)`` of the sampled-token estimators (module docstring).

    Args:
        student_logits: Tensor[..., V]; gradients flow into it through ``log q(y_t)`` only.
        teacher_logits: Tensor[..., V], same shape; detached.
        tokens: LongTensor[...] the sampled tokens y_t.
        estimator: ``"sampled_token"`` (plain advantage) or ``"vopd"`` (with the baseline).
        top_k: for ``"vopd"``, the baseline's vocabulary (:func:`vopd_baseline`).

    Returns:
        Tensor[...] whose gradient is an unbiased one-sample estimate of ∇KL(q ‖ p_T) per position.

    Raises:
        ValueError: unknown ``estimator``, shapes that do not match.
    """
    if estimator not in ("sampled_token", "vopd"):
        raise ValueError(f"estimator={estimator!r} is not 'sampled_token' or 'vopd'")
    if tokens.shape != student_logits.shape[:-1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match the logits' positions "
                         f"{tuple(student_logits.shape[:-1])}")
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    log_q = torch.log_softmax(student_logits.to(dtype), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    log_p = torch.log_softmax(teacher_logits.detach().to(dtype), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    advantage = (log_p - log_q).detach()
    if estimator == "vopd":
        advantage = advantage + vopd_baseline(student_logits, teacher_logits, top_k)
    return -advantage * log_q
