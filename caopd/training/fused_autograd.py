"""The autograd face of :mod:`caopd.training.fused_divergence`: gradients handed over, not recomputed.

:class:`FusedDivergence` runs the chunked loss of :func:`~caopd.training.fused_divergence.fused_divergence`
in its forward, which also finishes the gradients of the student's hidden states, LM-head weight
and bias; its backward multiplies them by the incoming scalar ``grad_output`` in place and hands
them to autograd (the context drops its references first, so autograd can adopt the head's
gradient as ``.grad`` without a copy). This is how fused linear-cross-entropy kernels work
(Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction`` computes ``grad_input``/``grad_weight``
in the forward and only scales them in the backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from caopd.training.divergence import DivergenceSpec
from caopd.training.fused_divergence import ChunkGrads, Head, fused_divergence
from caopd.training.logit_transform import LogitTransform


@dataclass(frozen=True)
class LossSpec:
    """The non-tensor arguments of :class:`FusedDivergence` (validated by the caller)."""

    divergence: DivergenceSpec
    chunk_size: int
    dtype: torch.dtype
    student_transform: LogitTransform
    teacher_transform: LogitTransform


def fused_forward(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None,
    weights: Tensor,
    spec: LossSpec,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, ChunkGrads]:
    """Loss sum, entropy sum over weight-≠0 rows and the gradients ``need`` asks for
    (hidden over ALL N rows, zero on dropped ones; weight; bias), in ``spec.dtype``."""
    dtype = spec.dtype
    student = Head(
        student_weight.detach().to(dtype),
        None if student_bias is None else student_bias.detach().to(dtype),
        spec.student_transform,
    )
    teacher = Head(
        teacher_weight.detach().to(dtype),
        None if teacher_bias is None else teacher_bias.detach().to(dtype),
        spec.teacher_transform,
    )
    n, width = student_hidden.shape
    w = weights.detach().to(dtype)
    kept = (w != 0).nonzero().squeeze(1)
    h_s, h_t = student_hidden.detach(), teacher_hidden.detach()
    if kept.numel() < n:  # weight-0 rows contribute nothing: drop them before any matmul
        h_s, h_t, w = h_s.index_select(0, kept), h_t.index_select(0, kept), w.index_select(0, kept)
    device, vocab = student.weight.device, student.weight.shape[0]
    grads = ChunkGrads(
        hidden=torch.empty((len(w), width), dtype=dtype, device=device) if need[0] else None,
        weight=torch.zeros((vocab, width), dtype=dtype, device=device) if need[1] else None,
        bias=torch.zeros((vocab,), dtype=dtype, device=device) if need[2] else None,
    )
    loss, entropy_sum = fused_divergence(
        h_s, h_t, w, student, teacher, spec.divergence, spec.chunk_size, grads
    )
    if grads.hidden is not None and kept.numel() < n:
        full = torch.zeros((n, width), dtype=dtype, device=device)
        grads.hidden = full.index_copy_(0, kept, grads.hidden)
    return loss, entropy_sum, grads


class FusedDivergence(torch.autograd.Function):
    """``(Σ_i w_i D_i, Σ_{w_i≠0} H(p_S,i))`` whose backward only scales gradients made in the forward.

    ``apply(student_hidden [N, H_s], student_weight [V, H_s], student_bias [V] | None,
    teacher_hidden [N, H_t], teacher_weight [V, H_t], teacher_bias [V] | None, weights [N],
    spec: LossSpec)``. Gradients flow to the three student tensors only (teacher tensors and
    weights get None; the entropy sum is not differentiable). The finished gradients are held on
    the context between forward and backward, so the graph can be back-propagated once
    (``retain_graph`` double backward raises).
    """

    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teacher_hidden,
                teacher_weight, teacher_bias, weights, spec):  # type: ignore[override]
        need = tuple(ctx.needs_input_grad[:3])
        with torch.autocast(device_type=student_hidden.device.type, enabled=False):
            loss, entropy_sum, grads = fused_forward(
                student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                teacher_bias, weights, spec, need,
            )
        ctx.grads = grads
        ctx.input_dtypes = tuple(
            None if t is None else t.dtype for t in (student_hidden, student_weight, student_bias)
        )
        ctx.mark_non_differentiable(entropy_sum)
        return loss, entropy_sum

    @staticmethod
    def backward(ctx, grad_loss, grad_entropy):  # type: ignore[override]
        return (*handed_gradients(ctx, grad_loss), None, None, None, None, None)


def handed_gradients(ctx: Any, grad_loss: Tensor | None) -> list[Tensor | None]:
    """The backward of a fused loss: the gradients of student hidden states, head weight and bias
    that its forward left in ``ctx.grads`` (a :class:`ChunkGrads`), scaled by ``grad_loss`` in
    place and cast to ``ctx.input_dtypes``; ``ctx.grads`` is dropped so autograd can adopt them.

    Raises:
        RuntimeError: a second backward through the same graph.
    """
    grads = ctx.grads
    if grads is None:
        raise RuntimeError(
            "a fused loss was back-propagated twice: its gradients are made in the forward "
            "and handed over once (no retain_graph double backward)"
        )
    ctx.grads = None  # hand the tensors over: autograd can keep them as .grad without a copy
    out = []
    for grad, dtype in zip((grads.hidden, grads.weight, grads.bias), ctx.input_dtypes):
        if grad is None or grad_loss is None:
            out.append(None)
            continue
        out.append(grad.mul_(grad_loss.to(grad.dtype)).to(dtype))
    del grads
    return out
