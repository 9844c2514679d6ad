"""The teacher's hidden states of a round: computed once per round when the teacher is frozen.

With ``distill.teacher: frozen`` the teacher never changes during a round, so its final hidden
states at the positions predicting an example's completion tokens are the same in every epoch.
:class:`TeacherStates` computes them once, at the start of the round (and again, identically, when
a run resumes), for every example this process will train on, in a fixed order and fixed
batches (ascending example index, ``batch_size`` examples at a time), and hands them out by
example index; a two-epoch round then runs the teacher once instead of twice. The fixed order
makes the cached values independent of where a run was resumed, so a resumed CPU run still ends
byte-identical to an uninterrupted one.

Memory: Σ over the process's examples of (completion tokens × H_t) floats, kept on the CPU.
With an EMA teacher, or online rounds (fresh examples every window), nothing is cached and the
teacher runs on every micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from caopd.training.data import Batch, DistillExample
from caopd.training.prefix import GroupedBatch, PlainInputs, SharedPrefixInputs, model_inputs

Inputs = PlainInputs | SharedPrefixInputs
Collate = Callable[[Sequence[DistillExample], int, bool], Batch | GroupedBatch]


@torch.no_grad()
def teacher_hidden_states(teacher: nn.Module, inputs: Inputs | Batch | GroupedBatch) -> Tensor:
    """The teacher's final hidden states at the positions predicting the loss tokens: [N, H_t]
    (``inputs``: the teacher's inputs, or a batch whose teacher inputs to run)."""
    if isinstance(inputs, (Batch, GroupedBatch)):
        inputs = model_inputs(inputs)[1]
    return inputs.hidden(teacher.base_model)


class TeacherStates:
    """Teacher hidden states per example index (module docstring); a pass-through when empty.

    Attributes:
        states: example index -> Tensor[c, H_t] on the CPU (c = the example's completion length).
    """

    def __init__(self) -> None:
        self.states: dict[int, Tensor] = {}

    def precompute(
        self,
        examples: Sequence[DistillExample],
        indices: Sequence[int],
        teacher: nn.Module,
        accelerator: Any,
        collate: Collate,
        batch_size: int,
    ) -> None:
        """Compute and keep the states of ``examples[i]`` for every i in ``indices``."""
        ordered = sorted(set(int(i) for i in indices))
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            batch = collate([examples[i] for i in chunk], 0, True).to(accelerator.device)
            with accelerator.autocast():
                hidden = teacher_hidden_states(teacher, model_inputs(batch)[1]).cpu()
            lengths = [examples[i].completion_len for i in chunk]
            for i, rows in zip(chunk, torch.split(hidden, lengths)):
                self.states[i] = rows

    def get(self, keys: Sequence[int] | None, inputs: Inputs, teacher: nn.Module,
            accelerator: Any) -> Tensor:
        """The teacher states of a micro-batch: Tensor[N, H_t], rows in the batch's order.

        Args:
            keys: the example index of each row of the micro-batch, or None (not cached).
            inputs: the batch's teacher inputs, run when the states are not cached.
        """
        if keys is not None and self.states and all(k in self.states for k in keys):
            return torch.cat([self.states[k] for k in keys]).to(accelerator.device)
        with accelerator.autocast():
            return teacher_hidden_states(teacher, inputs)
