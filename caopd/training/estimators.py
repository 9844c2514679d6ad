"""``distill.estimator``: the sampled-token and vOPD estimators inside the chunked fused loss.

:mod:`caopd.training.vopd` defines the estimators per position: at a position s_t where the
student sampled y_t ~ q, the loss ``−A_t · log q(y_t)`` with

    A_t = sg(log p_T(y_t) − log q(y_t))                        (``sampled_token``)
    A_t = sg(log p_T(y_t) − log q(y_t) + b(s_t))               (``vopd``)

where b is the closed-form control variate KL(q ‖ p_T)(s_t) over the full vocabulary
(``vopd_top_k: 0``) or over the student's top-k tokens renormalised. Both gradients are
unbiased one-sample estimates of ∇KL(q ‖ p_T), so these estimators go with
``divergence: reverse_kl`` only (:func:`check_estimator`).

**Rewritten positions.** CaOPD's rewrite writes ``Confidence: {P_acc}`` + EOS after the kept
prefix of the student's sample (:mod:`caopd.completion`): those tokens were not drawn from q, so
``−A ∇log q(y)`` would estimate nothing there. Positions flagged not sampled (``sampled`` False,
from the examples' ``sampled_len``: :class:`caopd.training.data.DistillExample`) take the exact
full-vocabulary reverse-KL gradient of :func:`~caopd.training.fused_divergence.divergence_chunk`.

Per position, with z the student's (transformed) logits and e_y the one-hot of y_t,

    ∂(−A · log q(y))/∂z = −A (e_y − q) = A q − A e_y        (A detached)

then the family's transform and the position weight, as the fused loss does. Like
:func:`~caopd.training.fused_divergence.fused_divergence`, positions go through in chunks of
``chunk_size`` rows (four chunk × V buffers, reused), the gradients of the hidden states, head
weight and bias are made in the forward and only scaled in the backward (no logits kept, none
recomputed), positions of weight 0 are dropped before any matmul, and everything is computed in
float32 (float64 for float64 inputs).

The returned loss is the surrogate whose gradient is handed over,
Σ_sampled w·(−A·log q(y)) + Σ_rewritten w·KL; the statistics' ``divergence_sum`` is the exact
Σ w·KL(q ‖ p_T) at every position, so curves compare across estimators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from caopd.training.divergence import DivergenceSpec, compute_dtype
from caopd.training.fused_autograd import LossSpec, handed_gradients
from caopd.training.fused_divergence import (
    ChunkGrads,
    Head,
    _log_softmax_,
    _logits_,
    _rowdot,
    accumulate_chunk_grads,
    divergence_chunk,
    finish_logit_grad_,
)
from caopd.training.logit_transform import IDENTITY, LogitTransform
from caopd.training.loss import LossStats, check_loss_inputs

#: ``distill.estimator`` values; the first is the exact gradient of any ``distill.divergence``.
ESTIMATORS = ("full_vocab", "sampled_token", "vopd")
#: The divergence the estimators are for (and that the rewritten positions take exactly).
REVERSE_KL = DivergenceSpec("reverse_kl")


def check_estimator(estimator: str, top_k: int, divergence: str) -> None:
    """Raise ValueError naming the keys when the ``distill`` estimator settings cannot run."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"distill.estimator={estimator!r} must be one of {ESTIMATORS}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"distill.vopd_top_k={top_k!r} must be an integer >= 0")
    if estimator != "full_vocab" and divergence != "reverse_kl":
        raise ValueError(f"distill.estimator={estimator!r} needs distill.divergence 'reverse_kl' "
                         f"(got {divergence!r}): the sampled-token estimators estimate its gradient")
    if top_k and estimator != "vopd":
        raise ValueError(f"distill.vopd_top_k={top_k} needs distill.estimator 'vopd' (got {estimator!r})")


def sampled_chunk(
    student_hidden: Tensor, teacher_hidden: Tensor, weights: Tensor, tokens: Tensor,
    student: Head, teacher: Head, estimator: str, top_k: int,
    buffers: tuple[Tensor, Tensor, Tensor, Tensor], want_grad: bool, unit_weights: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One chunk of sampled positions: surrogate, exact KL, entropy and ∂(Σ w·surrogate)/∂y.

    Args:
        student_hidden: Tensor[n, H_s]; teacher_hidden: Tensor[n, H_t]; weights: Tensor[n], in
            the compute dtype; tokens: LongTensor[n], the sampled tokens y_t.
        student, teacher: the heads; estimator: ``sampled_token`` or ``vopd``; top_k: vOPD's
            baseline vocabulary (0 = full).
        buffers: four Tensor[≥n, V] scratch buffers (overwritten); want_grad: make the gradient.

    Returns:
        ``(L, D, H, G)``: L Tensor[n] = −A·log q(y); D Tensor[n] = KL(q ‖ p_T); H Tensor[n] the
        student's entropy; G Tensor[n, V] (a view into ``buffers``) or None.
    """
    n = student_hidden.shape[0]
    x, y, s, m = (buf[:n] for buf in buffers)
    _logits_(y, teacher_hidden, teacher)
    _log_softmax_(y, s)  # y = log p_T
    _logits_(x, student_hidden, student)
    log_z = _log_softmax_(x, m)  # x = log q, m = q
    entropy = -_rowdot(m, x)
    y.sub_(x).neg_()  # log q − log p_T
    divergence = _rowdot(m, y)
    index = tokens.unsqueeze(1)
    log_q_y = x.gather(1, index).squeeze(1)
    advantage = -y.gather(1, index).squeeze(1)  # log p_T(y) − log q(y)
    if estimator == "vopd":
        if top_k == 0:
            advantage = advantage + divergence
        else:
            top = x.topk(top_k, dim=1).indices
            advantage = advantage + (x.gather(1, top).softmax(dim=1) * y.gather(1, top)).sum(dim=1)
    surrogate = -advantage * log_q_y
    grad = None
    if want_grad:
        grad = m.mul_(advantage.unsqueeze(1)).scatter_add_(1, index, -advantage.unsqueeze(1))
        finish_logit_grad_(grad, weights, unit_weights, student.transform, x, log_z)
    return surrogate, divergence, entropy, grad


@dataclass(frozen=True)
class EstimatorSpec:
    """The non-tensor arguments of :class:`EstimatorDivergence` (validated by the caller)."""

    loss: LossSpec
    estimator: str
    top_k: int


def estimator_forward(
    student_hidden: Tensor, student_weight: Tensor, student_bias: Tensor | None,
    teacher_hidden: Tensor, teacher_weight: Tensor, teacher_bias: Tensor | None,
    weights: Tensor, tokens: Tensor, sampled: Tensor, spec: EstimatorSpec,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor, ChunkGrads]:
    """Surrogate sum, exact KL sum, entropy sum over weight-≠0 rows and the gradients ``need``
    asks for (hidden over ALL N rows, zero on dropped ones; weight; bias), chunk by chunk: the
    sampled rows first, then the rewritten ones."""
    dtype = spec.loss.dtype
    student = Head(student_weight.detach().to(dtype),
                   None if student_bias is None else student_bias.detach().to(dtype),
                   spec.loss.student_transform)
    teacher = Head(teacher_weight.detach().to(dtype),
                   None if teacher_bias is None else teacher_bias.detach().to(dtype),
                   spec.loss.teacher_transform)
    n, width = student_hidden.shape
    w = weights.detach().to(dtype)
    keep, drawn = w != 0, sampled.to(torch.bool)
    order = torch.cat([(keep & drawn).nonzero().squeeze(1), (keep & ~drawn).nonzero().squeeze(1)])
    n_drawn, rows_kept = int((keep & drawn).sum()), len(order)
    h_s, h_t = student_hidden.detach().index_select(0, order), teacher_hidden.detach().index_select(0, order)
    w, tok = w.index_select(0, order), tokens.index_select(0, order)
    device, vocab = student.weight.device, student.weight.shape[0]
    grads = ChunkGrads(
        hidden=torch.empty((rows_kept, width), dtype=dtype, device=device) if need[0] else None,
        weight=torch.zeros((vocab, width), dtype=dtype, device=device) if need[1] else None,
        bias=torch.zeros((vocab,), dtype=dtype, device=device) if need[2] else None,
    )
    want_grad = any(need)
    loss, kl_sum, entropy_sum = (torch.zeros((), dtype=dtype, device=device) for _ in range(3))
    per_chunk = max(1, min(spec.loss.chunk_size, rows_kept))
    buffers = tuple(torch.empty((per_chunk, vocab), dtype=dtype, device=device) for _ in range(4))
    unit = bool((w == 1).all())
    for lo, hi, drawn_rows in ((0, n_drawn, True), (n_drawn, rows_kept, False)):
        for start in range(lo, hi, per_chunk):
            rows = slice(start, min(start + per_chunk, hi))
            chunk_s, chunk_w = h_s[rows].to(dtype), w[rows]
            if drawn_rows:
                surrogate, divergence, entropy, grad = sampled_chunk(
                    chunk_s, h_t[rows].to(dtype), chunk_w, tok[rows], student, teacher,
                    spec.estimator, spec.top_k, buffers, want_grad, unit)
            else:
                divergence, entropy, grad = divergence_chunk(
                    chunk_s, h_t[rows].to(dtype), chunk_w, student, teacher, REVERSE_KL,
                    buffers, want_grad, unit)
                surrogate = divergence
            loss = loss + (chunk_w * surrogate).sum()
            kl_sum = kl_sum + (chunk_w * divergence).sum()
            entropy_sum = entropy_sum + entropy.sum()
            if grad is not None:
                accumulate_chunk_grads(grads, rows, grad, chunk_s, student.weight)
    if grads.hidden is not None:
        full = torch.zeros((n, width), dtype=dtype, device=device)
        grads.hidden = full.index_copy_(0, order, grads.hidden)
    return loss, kl_sum, entropy_sum, grads


class EstimatorDivergence(torch.autograd.Function):
    """``(surrogate sum, Σ w·KL, Σ entropy)``; the backward only scales the gradients made in
    the forward (as :class:`~caopd.training.fused_autograd.FusedDivergence`).

    ``apply(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
    teacher_bias, weights [N], tokens [N], sampled [N], spec: EstimatorSpec)``.
    """

    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teacher_hidden,  # type: ignore[override]
                teacher_weight, teacher_bias, weights, tokens, sampled, spec):
        need = tuple(ctx.needs_input_grad[:3])
        with torch.autocast(device_type=student_hidden.device.type, enabled=False):
            loss, kl_sum, entropy_sum, grads = estimator_forward(
                student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                teacher_bias, weights, tokens, sampled, spec, need)
        ctx.grads = grads
        ctx.input_dtypes = tuple(
            None if t is None else t.dtype for t in (student_hidden, student_weight, student_bias))
        ctx.mark_non_differentiable(kl_sum, entropy_sum)
        return loss, kl_sum, entropy_sum

    @staticmethod
    def backward(ctx, grad_loss, grad_kl, grad_entropy):  # type: ignore[override]
        return (*handed_gradients(ctx, grad_loss), *(None,) * 7)


def chunked_estimator_loss(
    student_hidden: Tensor, teacher_hidden: Tensor, student_head: Tensor, teacher_head: Tensor,
    weights: Tensor, tokens: Tensor, sampled: Tensor, estimator: str, top_k: int = 0,
    chunk_size: int = 1024, student_bias: Tensor | None = None, teacher_bias: Tensor | None = None,
    transform: LogitTransform = IDENTITY, teacher_transform: LogitTransform | None = None,
) -> tuple[Tensor, LossStats]:
    """:func:`~caopd.training.loss.chunked_divergence_loss` with the reverse-KL gradient of the
    sampled positions replaced by ``estimator``'s (module docstring).

    Args: as :func:`~caopd.training.loss.chunked_divergence_loss`, plus
        tokens: LongTensor[N], the completion token each position predicts (y_t);
        sampled: BoolTensor[N], True where the student sampled it, False where the rewrite wrote it;
        estimator: ``sampled_token`` or ``vopd``; top_k: vOPD's baseline vocabulary (0 = full).

    Returns:
        ``(sum_loss, stats)``: the surrogate sum (gradients to the student's hidden states, head
        and bias) and :class:`~caopd.training.loss.LossStats` whose ``divergence_sum`` is the
        exact Σ w·KL(q ‖ p_T).

    Raises:
        ValueError: shapes that do not line up, an unknown estimator, ``top_k`` outside [0, V].
    """
    if estimator not in ESTIMATORS[1:]:
        raise ValueError(f"estimator={estimator!r} is not one of {ESTIMATORS[1:]}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    check_loss_inputs(student_hidden, teacher_hidden, student_head, teacher_head, weights,
                      student_bias, teacher_bias)
    n, vocab = student_hidden.shape[0], student_head.shape[0]
    if tokens.shape != (n,) or sampled.shape != (n,):
        raise ValueError(f"tokens {tuple(tokens.shape)} and sampled {tuple(sampled.shape)} must be ({n},)")
    if not 0 <= top_k <= vocab:
        raise ValueError(f"distill.vopd_top_k={top_k} must lie in [0, V={vocab}]")
    dtype = compute_dtype(torch.promote_types(student_hidden.dtype, student_head.dtype))
    spec = EstimatorSpec(
        loss=LossSpec(divergence=REVERSE_KL, chunk_size=chunk_size, dtype=dtype,
                      student_transform=transform,
                      teacher_transform=transform if teacher_transform is None else teacher_transform),
        estimator=estimator, top_k=top_k)
    student = (student_hidden, student_head, student_bias)
    teacher = (teacher_hidden.detach(), teacher_head.detach(),
               None if teacher_bias is None else teacher_bias.detach())
    rest = (weights.detach(), tokens.detach(), sampled.detach(), spec)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in student):
        loss, kl_sum, entropy_sum = EstimatorDivergence.apply(*student, *teacher, *rest)
    else:
        loss, kl_sum, entropy_sum, _ = estimator_forward(*student, *teacher, *rest, (False,) * 3)
    w = weights.detach().to(dtype)
    stats = LossStats(divergence_sum=kl_sum.detach(), weight_sum=w.sum(),
                      entropy_sum=entropy_sum.detach(), n_positions=(w != 0).sum())
    return loss, stats
