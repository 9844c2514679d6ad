"""Σ_i w_i · D(p_T,i ‖ p_S,i) from hidden states and LM heads, gradients computed in the forward.

The loss of :mod:`caopd.training.loss` at a 151,936-token vocabulary is where a distillation
spends its memory. Like the fused linear-loss kernels (Liger-Kernel's
``fused_linear_jsd_forward`` fills ``grad_input`` and ``grad_weight`` chunk by chunk inside the
forward of ``LigerFusedLinearJSDFunction``), :func:`fused_divergence` takes a chunk of
positions, builds its student and teacher logits, the divergence, the student's entropy AND the
gradient of the chunk's loss with respect to the student's logits, and immediately turns that into
the chunk's share of the gradients of the hidden states, the LM-head weight and bias (two
matmuls). Nothing of a chunk survives it and the backward only scales the finished gradients by
the incoming ``grad_output`` (:mod:`caopd.training.fused_autograd`): no logits are saved, none
are recomputed.

Gradients with respect to the student's (transformed) logits z, per position, with
p_S = softmax(z), p_T the teacher's, derived by the softmax chain rule
∂D/∂z_v = p_S,v (g_v − Σ_u p_S,u g_u) with g = ∂D/∂p_S:

- forward KL(p_T ‖ p_S):  g_v = −p_T,v / p_S,v           ->  ∂D/∂z = p_S − p_T
- reverse KL(p_S ‖ p_T):  g_v = log p_S,v − log p_T,v + 1 ->  ∂D/∂z = p_S ⊙ (log p_S − log p_T − D)
- KL mix λ·KL(p_S ‖ p_T) + (1 − λ)·KL(p_T ‖ p_S): the same combination of the two above,
  ∂D/∂z = λ p_S ⊙ (log p_S − log p_T − KL(p_S ‖ p_T)) + (1 − λ)(p_S − p_T)
- JSD_β (M = β p_T + (1 − β) p_S, D = β KL(p_T‖M) + (1 − β) KL(p_S‖M)):
  g_v = (1 − β)(log p_S,v − log M_v)   ->  ∂D/∂z = (1 − β) p_S ⊙ (log p_S − log M − KL(p_S ‖ M))

(the same expressions as TRL's ``ChunkedDivergenceFunction`` backward), then
∂z/∂y = :meth:`LogitTransform.derivative_from_output_` for the family's transform z = f(y).

Memory per chunk of n positions: four n×V buffers in the compute dtype, reused across chunks,
plus the V×H gradient of the head (the size of the head, the same as any backward gives it).
Positions with weight 0 are dropped before any matmul: they contribute exactly nothing.

Precision: every logit, probability and gradient is computed in ``dtype`` (float32, or float64
for float64 inputs) with autocast disabled. Logits from a finite linear map are finite, so the
log-probabilities are finite and ``0 · log p`` terms are exact zeros; a non-finite hidden state
or weight gives a non-finite loss, never a silently masked one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from caopd.training.divergence import DivergenceSpec
from caopd.training.logit_transform import LogitTransform


@dataclass(frozen=True)
class Head:
    """One model's LM head as the loss uses it: ``y = hidden @ weight.T + bias``, then ``transform``.

    Attributes:
        weight: Tensor[V, H] in the compute dtype; bias: Tensor[V] or None.
        transform: the family's final logit transform.
    """

    weight: Tensor
    bias: Tensor | None
    transform: LogitTransform


@dataclass
class ChunkGrads:
    """The gradients being accumulated (None where not wanted), in the compute dtype.

    Attributes:
        hidden: Tensor[n_kept, H_s]; weight: Tensor[V, H_s]; bias: Tensor[V].
    """

    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[i, v] · b[i, v] per row without an n×V temporary: Tensor[n, V] ×2 -> Tensor[n]."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _logits_(out: Tensor, hidden: Tensor, head: Head) -> Tensor:
    """``out`` ← f(hidden @ head.weight.T + bias): Tensor[n, V] written in place."""
    if head.bias is None:
        torch.mm(hidden, head.weight.t(), out=out)
    else:
        torch.addmm(head.bias, hidden, head.weight.t(), out=out)
    return head.transform.apply_(out)


def _log_softmax_(logits: Tensor, probs: Tensor) -> Tensor:
    """In place: ``logits`` ← log softmax(logits), ``probs`` ← softmax(logits), per row.

    Returns the per-row log-normaliser log Σ_v exp(z_v), Tensor[n, 1] (the max-shifted form
    ``m + log Σ exp(z − m)``, as ``torch.log_softmax`` computes it).
    """
    shift = logits.amax(dim=1, keepdim=True)
    logits.sub_(shift)
    torch.exp(logits, out=probs)
    total = probs.sum(dim=1, keepdim=True)
    log_total = total.log()
    logits.sub_(log_total)
    probs.div_(total)
    return shift + log_total


def divergence_chunk(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    weights: Tensor,
    student: Head,
    teacher: Head,
    spec: DivergenceSpec,
    buffers: tuple[Tensor, Tensor, Tensor, Tensor],
    want_grad: bool,
    unit_weights: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Divergence, entropy and (optionally) the loss gradient w.r.t. the student's raw logits.

    Args:
        student_hidden: Tensor[n, H_s]; teacher_hidden: Tensor[n, H_t]; weights: Tensor[n]; all
            in the compute dtype.
        student, teacher: the two heads (:class:`Head`).
        spec: the divergence and its parameter (:class:`~caopd.training.divergence.DivergenceSpec`,
            valid by construction): ``beta`` is the jsd mixture weight in (0, 1), or kl_mix's λ.
        buffers: four Tensor[≥n, V] scratch buffers in the compute dtype (overwritten).
        want_grad: compute the gradient.
        unit_weights: every weight is 1 (skips one n×V multiplication).

    Returns:
        ``(D, H, G)``: D Tensor[n], the per-position divergence (nats); H Tensor[n], the student's
        entropy −Σ p_S log p_S; G Tensor[n, V] = ∂(Σ_i w_i D_i)/∂y (a view into ``buffers``,
        valid until their next use) or None.
    """
    n, kind, beta = student_hidden.shape[0], spec.kind, spec.beta
    x, y, s, m = (buf[:n] for buf in buffers)
    _logits_(y, teacher_hidden, teacher)
    _log_softmax_(y, s)  # y = log p_T, s = p_T
    _logits_(x, student_hidden, student)
    log_z = _log_softmax_(x, m)  # x = log p_S, m = p_S
    entropy = -_rowdot(m, x)

    if kind == "forward_kl":
        y.sub_(x)  # log p_T − log p_S
        divergence = _rowdot(s, y)
        grad = m.sub_(s) if want_grad else None  # p_S − p_T
    elif kind == "reverse_kl":
        y.sub_(x).neg_()  # log p_S − log p_T
        divergence = _rowdot(m, y)
        grad = y.sub_(divergence.unsqueeze(1)).mul_(m) if want_grad else None
    elif kind == "kl_mix":
        y.sub_(x)  # log p_T − log p_S
        forward = _rowdot(s, y)
        y.neg_()  # log p_S − log p_T
        reverse = _rowdot(m, y)
        divergence = beta * reverse + (1.0 - beta) * forward
        grad = None
        if want_grad:
            grad = y.sub_(reverse.unsqueeze(1)).mul_(m).mul_(beta)  # λ p_S (log p_S − log p_T − KL_rev)
            grad.add_(s.sub_(m).mul_(beta - 1.0))  # + (1 − λ)(p_S − p_T)
    else:
        # log M = log(1 − β) + logaddexp(log p_S, log p_T + log(β / (1 − β)))
        torch.add(y, math.log(beta) - math.log1p(-beta), out=s)
        torch.logaddexp(s, x, out=s)
        s.add_(math.log1p(-beta))
        y.sub_(s)  # log p_T − log M
        torch.add(y, s, out=m).exp_()  # p_T
        teacher_term = _rowdot(m, y)
        torch.sub(x, s, out=y)  # log p_S − log M
        torch.exp(x, out=m)  # p_S
        student_term = _rowdot(m, y)  # KL(p_S ‖ M)
        divergence = beta * teacher_term + (1.0 - beta) * student_term
        grad = None
        if want_grad:
            grad = y.sub_(student_term.unsqueeze(1)).mul_(m).mul_(1.0 - beta)

    if grad is not None:
        finish_logit_grad_(grad, weights, unit_weights, student.transform, x, log_z)
    return divergence, entropy, grad


def finish_logit_grad_(grad: Tensor, weights: Tensor, unit_weights: bool, transform: LogitTransform,
                       log_p: Tensor, log_z: Tensor) -> Tensor:
    """In place: ∂/∂z per row → ``w_i ·`` ∂/∂y through the family's transform z = f(y).

    Shapes: grad, log_p Tensor[n, V] (``log_p`` = log p_S, overwritten with z then f'(y) under a
    soft-cap); weights Tensor[n]; log_z Tensor[n, 1] (the log-normaliser of
    :func:`_log_softmax_`, so z = log p_S + log_z).
    """
    if not unit_weights:
        grad.mul_(weights.unsqueeze(1))
    if transform.softcap is not None:
        grad.mul_(transform.derivative_from_output_(log_p.add_(log_z)))  # log_p ← z ← f'(y)
    elif transform.scale != 1.0:
        grad.mul_(transform.scale)
    return grad


def accumulate_chunk_grads(
    grads: ChunkGrads, rows: slice, grad_logits: Tensor, hidden: Tensor, weight: Tensor
) -> None:
    """Add one chunk's share: hidden[rows] = G W, weight += Gᵀ h, bias += Σ_rows G.

    Shapes: grad_logits Tensor[n, V], hidden Tensor[n, H], weight Tensor[V, H].
    """
    if grads.hidden is not None:
        torch.mm(grad_logits, weight, out=grads.hidden[rows])
    if grads.weight is not None:
        grads.weight.addmm_(grad_logits.t(), hidden)
    if grads.bias is not None:
        grads.bias.add_(grad_logits.sum(dim=0))


def fused_divergence(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    weights: Tensor,
    student: Head,
    teacher: Head,
    spec: DivergenceSpec,
    chunk_size: int,
    grads: ChunkGrads,
) -> tuple[Tensor, Tensor]:
    """``(Σ_i w_i D_i, Σ_i H_i)`` over all rows, chunk by chunk, filling ``grads`` in place.

    All rows must have nonzero weight (the caller drops the others). Shapes: hidden Tensor[n, H_*]
    (any float dtype, cast per chunk), weights Tensor[n] in the compute dtype of the heads.
    """
    n, vocab = student_hidden.shape[0], student.weight.shape[0]
    dtype, device = student.weight.dtype, student.weight.device
    want_grad = any(g is not None for g in (grads.hidden, grads.weight, grads.bias))
    loss = torch.zeros((), dtype=dtype, device=device)
    entropy_sum = torch.zeros((), dtype=dtype, device=device)
    if n == 0:
        return loss, entropy_sum
    unit_weights = bool((weights == 1).all())
    rows_per_chunk = min(chunk_size, n)
    buffers = tuple(torch.empty((rows_per_chunk, vocab), dtype=dtype, device=device) for _ in range(4))
    for start in range(0, n, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, n))
        h_s = student_hidden[rows].to(dtype)
        w = weights[rows]
        divergence, entropy, grad_logits = divergence_chunk(
            h_s, teacher_hidden[rows].to(dtype), w, student, teacher, spec, buffers,
            want_grad, unit_weights,
        )
        loss = loss + (w * divergence).sum()
        entropy_sum = entropy_sum + entropy.sum()
        if grad_logits is not None:
            accumulate_chunk_grads(grads, rows, grad_logits, h_s, student.weight)
    return loss, entropy_sum
