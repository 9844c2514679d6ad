"""The student's objective: teacher and student forwards, then the chunked divergence over the
completion tokens (:class:`StudentObjective`; DESIGN §1.4)."""

from __future__ import annotations

from torch import Tensor, nn

from caopd.training.divergence import DivergenceSpec
from caopd.training.estimators import chunked_estimator_loss
from caopd.training.logit_transform import LogitTransform, logit_transform_for
from caopd.training.loss import LossStats, chunked_divergence_loss
from caopd.training.prefix import PlainInputs, SharedPrefixInputs


class StudentObjective(nn.Module):
    """The student plus the loss, so the LM head is used inside the (DDP-wrapped) forward.

    ``forward`` returns ``(sum_loss, stats)`` of :func:`chunked_divergence_loss` for one batch,
    with the final logit transform of the student's family (Gemma's soft-capping, Cohere's and
    Granite's scaling; :mod:`caopd.training.logit_transform`) applied to both heads' logits: the
    teacher is a copy of the student, of the same family.

    Raises:
        UnsupportedModelFamily: ``transform`` is None and the model's family is not known to
            :func:`logit_transform_for` (at construction, before any training).
    """

    def __init__(
        self,
        model: nn.Module,
        divergence: DivergenceSpec,
        chunk_size: int,
        transform: LogitTransform | None = None,
        estimator: str = "full_vocab",
        top_k: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.divergence = divergence
        self.chunk_size = chunk_size
        self.transform = logit_transform_for(model.config) if transform is None else transform
        self.estimator = estimator  # issue 18: caopd.training.estimators
        self.top_k = top_k

    def forward(
        self,
        inputs: PlainInputs | SharedPrefixInputs,
        teacher_hidden: Tensor,
        teacher_head: Tensor,
        teacher_bias: Tensor | None,
        weights: Tensor,
        tokens: Tensor | None = None,
        sampled: Tensor | None = None,
    ) -> tuple[Tensor, LossStats]:
        """Shapes: ``inputs`` select N positions of the student; teacher_hidden Tensor[N, H_t];
        teacher_head Tensor[V, H_t] (the teacher's LM-head weight), teacher_bias Tensor[V] or
        None; weights Tensor[N]; tokens LongTensor[N] and sampled BoolTensor[N] (the token each
        position predicts, and whether the student sampled it), used by the sampled-token
        estimators only (:func:`~caopd.training.estimators.chunked_estimator_loss`)."""
        head = self.model.get_output_embeddings()
        if self.estimator != "full_vocab":
            if tokens is None or sampled is None:
                raise ValueError(f"estimator {self.estimator!r} needs the positions' tokens and sampled flags")
            return chunked_estimator_loss(
                inputs.hidden(self.model.base_model), teacher_hidden, head.weight, teacher_head,
                weights, tokens, sampled, self.estimator, self.top_k, self.chunk_size,
                student_bias=head.bias, teacher_bias=teacher_bias, transform=self.transform,
            )
        return chunked_divergence_loss(
            inputs.hidden(self.model.base_model),
            teacher_hidden,
            head.weight,
            teacher_head,
            weights,
            self.divergence,
            self.chunk_size,
            student_bias=head.bias,
            teacher_bias=teacher_bias,
            transform=self.transform,
        )
