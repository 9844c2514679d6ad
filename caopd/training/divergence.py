"""Per-position divergences between a teacher and a student over the full vocabulary.

Convention (used by every function here):

    p_T = softmax(teacher_logits)          p_S = softmax(student_logits)

- ``forward_kl``  = KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S).
  This is what the released CaOPD reference code computes (its default ``alpha=0``).
- ``reverse_kl``  = KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T).
  This is what the paper's text says.
- ``jsd`` (generalised Jensen–Shannon, TRL ``GKDTrainer.generalized_jsd_loss`` convention):

      M      = beta · p_T + (1 − beta) · p_S          (mixed in log space with logsumexp)
      JSD_β  = beta · KL(p_T ‖ M) + (1 − beta) · KL(p_S ‖ M)

  At ``beta = 0`` the mixture is p_S and at ``beta = 1`` it is p_T, so the formula vanishes
  identically at both ends (TRL special-cases those two values to the KLs). Here ``jsd``
  therefore requires ``0 < beta < 1`` and the KLs are selected by name instead. What *is* true
  at the ends is a scaled limit (derived by expanding M = p_S + β(p_T − p_S) to second order):

      JSD_β / β       → KL(p_T ‖ p_S)  (forward)  as β → 0
      JSD_β / (1 − β) → KL(p_S ‖ p_T)  (reverse)  as β → 1

  more precisely JSD_β / β = KL(p_T ‖ p_S) − β · χ²(p_T ‖ p_S) / 2 + O(β²), where
  χ²(p_T ‖ p_S) = Σ (p_T − p_S)² / p_S. The unscaled JSD_β goes to 0 at both ends.

  At ``beta = 0.5`` it is the symmetric JSD, bounded by log 2.
- ``kl_mix`` (KL mixing, shared/PAPER.md "KL direction × prefix source"), with λ in [0, 1] passed
  as ``beta`` (``distill.kl_mix_lambda``):

      KL_mix_λ = λ · KL(p_S ‖ p_T) + (1 − λ) · KL(p_T ‖ p_S)

  At λ = 0 it is ``forward_kl`` and at λ = 1 ``reverse_kl``, exactly (the other term is
  multiplied by 0.0).

Precision: logits are cast up to at least float32 before the softmax (float16/bfloat16/float32
inputs are computed in float32, float64 inputs stay float64); nothing is computed in bf16.
The result has that dtype, one value per position.

Gradients flow to the student logits only: the teacher logits are detached inside, so a caller
cannot accidentally train the teacher through the loss.

Vocabulary entries with probability exactly 0 (``-inf`` logits) contribute 0 to the sums in which
they are the weighting distribution (0 · log 0 = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd", "kl_mix"]

DivergenceFn = Callable[[Tensor, Tensor, float], Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype divergences are computed in for inputs of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_v p (log p − log q) over the last axis.

    Args:
        log_p, log_q: Tensor[..., V] normalised log-probabilities (same shape and dtype).

    Returns:
        Tensor[...]; terms where p = 0 count as 0 (also when log q = −inf there).
    """
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def forward_kl_from_log_probs(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """KL(p_T ‖ p_S) per position; ``beta`` is ignored. Shapes: Tensor[..., V] -> Tensor[...]."""
    return kl_from_log_probs(teacher_logp, student_logp)


def reverse_kl_from_log_probs(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """KL(p_S ‖ p_T) per position; ``beta`` is ignored. Shapes: Tensor[..., V] -> Tensor[...]."""
    return kl_from_log_probs(student_logp, teacher_logp)


def jsd_from_log_probs(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """Generalised JSD per position, TRL convention (module docstring); needs 0 < beta < 1.

    Shapes: Tensor[..., V] -> Tensor[...].
    """
    check_jsd_beta(beta)
    mixture_logp = torch.logaddexp(
        teacher_logp + math.log(beta), student_logp + math.log1p(-beta)
    )
    teacher_term = kl_from_log_probs(teacher_logp, mixture_logp)
    student_term = kl_from_log_probs(student_logp, mixture_logp)
    return beta * teacher_term + (1.0 - beta) * student_term


def kl_mix_from_log_probs(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """λ · KL(p_S ‖ p_T) + (1 − λ) · KL(p_T ‖ p_S) per position with λ = ``beta`` in [0, 1].

    Shapes: Tensor[..., V] -> Tensor[...].
    """
    check_kl_mix_lambda(beta)
    reverse = kl_from_log_probs(student_logp, teacher_logp)
    forward = kl_from_log_probs(teacher_logp, student_logp)
    return beta * reverse + (1.0 - beta) * forward


def check_kl_mix_lambda(lam: float) -> None:
    """Raise ValueError unless 0 <= lam <= 1 (the weight of the reverse KL in ``kl_mix``)."""
    if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0.0 <= lam <= 1.0):
        raise ValueError(f"kl_mix lambda={lam!r} must lie in [0, 1] (0 = forward KL, 1 = reverse KL)")


def check_jsd_beta(beta: float) -> None:
    """Raise ValueError unless 0 < beta < 1 (the interpolated JSD vanishes at 0 and 1)."""
    if not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(
            f"jsd beta={beta!r} must lie strictly between 0 and 1: the interpolated JSD is "
            "identically 0 at beta=0 and beta=1; select 'forward_kl' or 'reverse_kl' by name "
            "instead"
        )


@dataclass(frozen=True)
class Divergence:
    """A registered divergence and what a config or report needs to know about it.

    Attributes:
        name: the config value (``distill.divergence``).
        fn: ``fn(student_logp, teacher_logp, beta) -> Tensor[...]`` on normalised log-probs.
        uses_beta: whether ``beta`` (``jsd_beta`` in config) changes the value.
        formula: human-readable definition in the module's p_T / p_S convention.
        reference_default: True for the divergence the released reference code computes.
        higher_is_better: always False (a loss).
    """

    name: str
    fn: DivergenceFn
    uses_beta: bool
    formula: str
    reference_default: bool = False
    higher_is_better: bool = False


DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence(
            name="forward_kl",
            fn=forward_kl_from_log_probs,
            uses_beta=False,
            formula="KL(p_T || p_S)",
            reference_default=True,
        ),
        Divergence(
            name="reverse_kl",
            fn=reverse_kl_from_log_probs,
            uses_beta=False,
            formula="KL(p_S || p_T)",
        ),
        Divergence(
            name="jsd",
            fn=jsd_from_log_probs,
            uses_beta=True,
            formula="beta*KL(p_T || M) + (1-beta)*KL(p_S || M), M = beta*p_T + (1-beta)*p_S",
        ),
        Divergence(
            name="kl_mix",
            fn=kl_mix_from_log_probs,
            uses_beta=True,
            formula="lambda*KL(p_S || p_T) + (1-lambda)*KL(p_T || p_S)",
        ),
    )
}


@dataclass(frozen=True)
class DivergenceSpec:
    """The divergence a loss minimises: a :data:`DIVERGENCES` name and its parameter, valid by
    construction (the one place ``distill.divergence`` and its parameter are checked).

    The definitions are those of this module's docstring (p_T / p_S convention): ``forward_kl``
    KL(p_T ‖ p_S) (the released CaOPD reference code), ``reverse_kl`` KL(p_S ‖ p_T) (the paper's
    text), ``jsd`` the generalised JSD of TRL's ``GKDTrainer.generalized_jsd_loss`` with teacher
    weight ``beta``, and ``kl_mix`` λ · KL(p_S ‖ p_T) + (1 − λ) · KL(p_T ‖ p_S) with λ = ``beta``
    (shared/PAPER.md "KL direction × prefix source").

    Attributes:
        kind: ``forward_kl``, ``reverse_kl``, ``jsd`` or ``kl_mix`` (``distill.divergence``).
        beta: ``jsd``'s teacher weight in (0, 1) (``distill.jsd_beta``) or ``kl_mix``'s λ in
            [0, 1] (``distill.kl_mix_lambda``); ignored by the two KLs.

    Raises:
        ValueError: unknown ``kind``, ``kind='jsd'`` with beta outside (0, 1), or
            ``kind='kl_mix'`` with beta (λ) outside [0, 1].
    """

    kind: DivergenceKind
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in DIVERGENCES:
            raise ValueError(f"divergence kind={self.kind!r} is not one of {sorted(DIVERGENCES)}")
        if self.kind == "jsd":
            check_jsd_beta(self.beta)
        elif self.kind == "kl_mix":
            check_kl_mix_lambda(self.beta)


def get_divergence(kind: str, beta: float = 0.5) -> Divergence:
    """Look up ``kind`` in :data:`DIVERGENCES`, validating ``beta`` where it is used.

    Raises:
        ValueError: as :class:`DivergenceSpec`.
    """
    return DIVERGENCES[DivergenceSpec(kind, beta).kind]


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    kind: DivergenceKind,
    beta: float = 0.5,
) -> Tensor:
    """Divergence between teacher and student at every position.

    Args:
        student_logits: Tensor[..., V], any float dtype; gradients flow into it.
        teacher_logits: Tensor[..., V], same shape; detached inside (no gradient).
        kind: ``"forward_kl"`` (KL(p_T‖p_S), the reference code), ``"reverse_kl"``
            (KL(p_S‖p_T), the paper's text) or ``"jsd"`` (TRL generalised JSD).
        beta: mixture weight of the teacher for ``"jsd"``, in (0, 1); ignored otherwise.

    Returns:
        Tensor[...] in :func:`compute_dtype` of the inputs (float32 for bf16/fp16/fp32 inputs).

    Raises:
        ValueError: shape mismatch, unknown ``kind``, or jsd beta outside (0, 1).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits shape {tuple(student_logits.shape)} != teacher_logits shape "
            f"{tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 1:
        raise ValueError("student_logits must have a vocabulary axis (at least 1-D)")
    divergence = get_divergence(kind, beta)
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    student_logp = torch.log_softmax(student_logits.to(dtype), dim=-1)
    teacher_logp = torch.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
    return divergence.fn(student_logp, teacher_logp, beta)
