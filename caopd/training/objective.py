"""The student's objective: teacher and student forwards, then the chunked divergence over the
completion tokens (:class:`StudentObjective`; DESIGN §1.4)."""

from __future__ import annotations

from torch import Tensor, nn

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
        kind: str,
        beta: float,
        chunk_size: int,
        transform: LogitTransform | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.beta = beta
        self.chunk_size = chunk_size
        self.transform = logit_transform_for(model.config) if transform is None else transform

    def forward(
        self,
        inputs: PlainInputs | SharedPrefixInputs,
        teacher_hidden: Tensor,
        teacher_head: Tensor,
        teacher_bias: Tensor | None,
        weights: Tensor,
    ) -> tuple[Tensor, LossStats]:
        """Shapes: ``inputs`` select N positions of the student; teacher_hidden Tensor[N, H_t];
        teacher_head Tensor[V, H_t] (the teacher's LM-head weight), teacher_bias Tensor[V] or
        None; weights Tensor[N]."""
        head = self.model.get_output_embeddings()
        return chunked_divergence_loss(
            inputs.hidden(self.model.base_model),
            teacher_hidden,
            head.weight,
            teacher_head,
            weights,
            self.kind,
            self.beta,
            self.chunk_size,
            student_bias=head.bias,
            teacher_bias=teacher_bias,
            transform=self.transform,
        )
