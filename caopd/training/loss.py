"""The distillation loss, computed in chunks of positions so ``B×T×V`` logits never exist.

The distill stage runs the student (plain prompt + completion) and the teacher (privileged prompt
+ the same completion), gathers the final hidden states at the positions that predict the loss
tokens, and hands them here with the two LM-head matrices. :func:`chunked_divergence_loss`
projects one chunk of positions at a time to float32 logits, applies the model family's final
logit transform (:mod:`caopd.training.logit_transform`), takes the per-position divergence (the
definitions of :mod:`caopd.training.divergence`) and sums it with per-position weights. The
chunk's gradients with respect to the student's hidden states, LM-head weight and bias are made
in the same pass (:mod:`caopd.training.fused_divergence`), so peak memory holds a few chunks of
logits and the head's gradient, and the backward neither keeps nor recomputes any logits.

Gradient accumulation (see :func:`normalise_by_tokens`): every micro-batch's loss is its SUM over
loss tokens divided by the number of loss tokens in the WHOLE accumulated batch, so the
accumulated gradient equals that of the per-token mean over the big batch however unevenly the
tokens fall into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from caopd.training.divergence import DivergenceSpec, compute_dtype
from caopd.training.fused_autograd import FusedDivergence, LossSpec, fused_forward
from caopd.training.logit_transform import IDENTITY, LogitTransform


@dataclass(frozen=True)
class LossStats:
    """Detached statistics of one :func:`chunked_divergence_loss` call, all as sums so they add
    across micro-batches and ranks.

    Attributes:
        divergence_sum: 0-dim, Σ_i w_i · D_i (the loss value, detached).
        weight_sum: 0-dim, Σ_i w_i.
        entropy_sum: 0-dim, Σ of the student's entropy H(p_S) over positions with w_i ≠ 0.
        n_positions: 0-dim, number of positions with w_i ≠ 0.
    """

    divergence_sum: Tensor
    weight_sum: Tensor
    entropy_sum: Tensor
    n_positions: Tensor

    @property
    def mean_entropy(self) -> Tensor:
        """Mean student entropy (nats) over positions with nonzero weight; 0 when there are none."""
        return self.entropy_sum / self.n_positions.clamp_min(1)

    @property
    def mean_divergence(self) -> Tensor:
        """Weighted mean divergence Σ w·D / Σ w; 0 when all weights are 0."""
        return torch.where(
            self.weight_sum != 0,
            self.divergence_sum / torch.where(self.weight_sum != 0, self.weight_sum, 1.0),
            torch.zeros_like(self.divergence_sum),
        )


def chunked_divergence_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    student_head: Tensor,
    teacher_head: Tensor,
    weights: Tensor,
    divergence: DivergenceSpec,
    chunk_size: int = 1024,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    transform: LogitTransform = IDENTITY,
    teacher_transform: LogitTransform | None = None,
) -> tuple[Tensor, LossStats]:
    """Σ_i w_i · D(p_T,i, p_S,i) over N gathered positions, never holding all N×V logits.

    Args:
        student_hidden: Tensor[N, H_s], the student's final hidden states at the N selected
            positions (each predicting one loss token), in order; gradients flow into it.
        teacher_hidden: Tensor[N, H_t], the teacher's at the positions predicting the same tokens;
            detached inside.
        student_head: Tensor[V, H_s], the student's LM-head weight; gradients flow into it.
        teacher_head: Tensor[V, H_t], the teacher's; detached inside.
        weights: Tensor[N], per-position loss weights (0 for masked positions).
        divergence: which divergence D is and its parameter
            (:class:`~caopd.training.divergence.DivergenceSpec`, valid by construction).
        chunk_size: positions per chunk (peak extra memory ≈ 4 × chunk_size × V floats
            plus the V × H_s gradient of the head).
        student_bias, teacher_bias: optional Tensor[V] LM-head biases.
        transform: the student family's final logit transform
            (:func:`~caopd.training.logit_transform.logit_transform_for`); identity by default.
        teacher_transform: the teacher's, if it differs (None: the student's).

    Returns:
        ``(sum_loss, stats)``: ``sum_loss`` is a 0-dim tensor in float32 (float64 if the inputs
        are float64) carrying gradients to ``student_hidden``, ``student_head`` and
        ``student_bias``; ``stats`` is a :class:`LossStats` of detached sums.

    Logits, probabilities and gradients are computed in float32 (float64 for float64 inputs)
    with autocast disabled; each head is cast once per call (no copy when it is already float32,
    e.g. fp32 master weights). Positions with weight 0 are dropped before any matmul, so they get
    exactly zero gradient and add nothing to the loss or the statistics. With no position of
    nonzero weight the loss is a zero still connected to the student's tensors, so every
    parameter receives a (zero) gradient, as DDP requires. The graph can be back-propagated once
    (the gradients are made in the forward and handed over, not recomputed).

    Raises:
        ValueError: shapes that do not line up or ``chunk_size < 1``.
        TypeError: ``divergence`` is not a :class:`~caopd.training.divergence.DivergenceSpec`.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    if not isinstance(divergence, DivergenceSpec):
        raise TypeError(f"divergence={divergence!r} must be a DivergenceSpec, not a name")
    check_loss_inputs(student_hidden, teacher_hidden, student_head, teacher_head, weights,
                      student_bias, teacher_bias)
    dtype = compute_dtype(torch.promote_types(student_hidden.dtype, student_head.dtype))
    spec = LossSpec(
        divergence=divergence,
        chunk_size=chunk_size,
        dtype=dtype,
        student_transform=transform,
        teacher_transform=transform if teacher_transform is None else teacher_transform,
    )
    student = (student_hidden, student_head, student_bias)
    teacher = (teacher_hidden.detach(), teacher_head.detach(),
               None if teacher_bias is None else teacher_bias.detach())
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in student):
        loss, entropy_sum = FusedDivergence.apply(*student, *teacher, weights.detach(), spec)
    else:
        loss, entropy_sum, _ = fused_forward(*student, *teacher, weights, spec, (False,) * 3)
    w = weights.detach().to(dtype)
    stats = LossStats(
        divergence_sum=loss.detach(),
        weight_sum=w.sum(),
        entropy_sum=entropy_sum.detach(),
        n_positions=(w != 0).sum(),
    )
    return loss, stats


def check_loss_inputs(student_hidden: Tensor, teacher_hidden: Tensor, student_head: Tensor,
                      teacher_head: Tensor, weights: Tensor, student_bias: Tensor | None,
                      teacher_bias: Tensor | None) -> None:
    """The shape checks of :func:`chunked_divergence_loss` (its Args); raises ValueError."""
    if student_hidden.dim() != 2 or teacher_hidden.dim() != 2:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden "
            f"{tuple(teacher_hidden.shape)} must both be [N, H] (gather the loss positions first)"
        )
    n = student_hidden.shape[0]
    if teacher_hidden.shape[0] != n or weights.shape != (n,):
        raise ValueError(
            f"position counts differ: student_hidden has {n}, teacher_hidden "
            f"{teacher_hidden.shape[0]}, weights shape {tuple(weights.shape)} (want ({n},))"
        )
    if student_head.dim() != 2 or teacher_head.dim() != 2:
        raise ValueError("student_head and teacher_head must be [V, H] matrices")
    if student_head.shape[0] != teacher_head.shape[0]:
        raise ValueError(
            f"vocabulary sizes differ: student_head V={student_head.shape[0]}, "
            f"teacher_head V={teacher_head.shape[0]}"
        )
    if student_head.shape[1] != student_hidden.shape[1]:
        raise ValueError(
            f"student_head {tuple(student_head.shape)} does not match student_hidden width "
            f"{student_hidden.shape[1]}"
        )
    if teacher_head.shape[1] != teacher_hidden.shape[1]:
        raise ValueError(
            f"teacher_head {tuple(teacher_head.shape)} does not match teacher_hidden width "
            f"{teacher_hidden.shape[1]}"
        )
    vocab = student_head.shape[0]
    for name, bias in (("student_bias", student_bias), ("teacher_bias", teacher_bias)):
        if bias is not None and bias.shape != (vocab,):
            raise ValueError(f"{name} shape {tuple(bias.shape)} must be ({vocab},)")


def completion_loss_mask(completion_mask: Tensor, skip_first: int) -> Tensor:
    """Drop the first ``skip_first`` completion tokens of every row from the loss.

    Args:
        completion_mask: Tensor[B, T], nonzero (1 / True) on completion tokens. The completion may
            start at a different offset in each row (left or right padding, prompt of any length);
            the first ``skip_first`` nonzero entries of each row are the ones dropped.
        skip_first: number of leading completion tokens to drop per row (DESIGN §1 step 4: 3).

    Returns:
        Tensor[B, T] of ``completion_mask``'s dtype: 1 / True on kept tokens, 0 elsewhere. A row
        with at most ``skip_first`` completion tokens is all zero. The mask is over *target*
        tokens; the caller shifts by one to select the hidden states that predict them.

    Raises:
        ValueError: ``completion_mask`` not 2-D, or ``skip_first`` not a non-negative int.
    """
    if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
        raise ValueError(f"skip_first={skip_first!r} must be a non-negative integer")
    if completion_mask.dim() != 2:
        raise ValueError(f"completion_mask shape {tuple(completion_mask.shape)} must be [B, T]")
    is_completion = completion_mask != 0
    rank = is_completion.long().cumsum(dim=1)  # 1-based index among the row's completion tokens
    keep = is_completion & (rank > skip_first)
    return keep.to(completion_mask.dtype)


def normalise_by_tokens(
    sum_loss: Tensor,
    n_tokens_in_global_batch: int | float | Tensor,
    world_size: int = 1,
) -> Tensor:
    """The loss to back-propagate for one micro-batch under gradient accumulation.

    Rule: ``loss_micro = sum_loss_micro / n_tokens_in_global_batch``, where the denominator is
    the number of loss tokens (or their total weight) in the WHOLE accumulated batch: every
    micro-batch of this optimizer step and, under data parallelism, every rank (all-reduce it
    before the first backward). Summing the gradients of the micro-batches then gives exactly the
    gradient of the per-token mean over the big batch, even when micro-batches hold unequal
    numbers of tokens (dividing each micro-batch by its own count and averaging would weight the
    tokens of short micro-batches more).

    DDP and FSDP *average* gradients over ranks; ``world_size`` multiplies the loss back so that
    the averaged gradient is still the global per-token mean. With 1 process leave it at 1.

    Args:
        sum_loss: 0-dim, the micro-batch's Σ over its loss tokens (from
            :func:`chunked_divergence_loss`).
        n_tokens_in_global_batch: int, float or 0-dim tensor ≥ 0. A global batch with no loss
            tokens has ``sum_loss = 0`` and gives a zero loss (a zero denominator is replaced by 1).
        world_size: number of data-parallel ranks whose gradients are averaged.

    Raises:
        ValueError: negative Python-number token count or ``world_size < 1``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a positive integer")
    if isinstance(n_tokens_in_global_batch, Tensor):
        count = n_tokens_in_global_batch.to(sum_loss.dtype)
        denominator = torch.where(count > 0, count, torch.ones_like(count))
    else:
        if not n_tokens_in_global_batch >= 0:
            raise ValueError(
                f"n_tokens_in_global_batch={n_tokens_in_global_batch!r} must be >= 0"
            )
        denominator = float(n_tokens_in_global_batch) if n_tokens_in_global_batch > 0 else 1.0
    return sum_loss * world_size / denominator
