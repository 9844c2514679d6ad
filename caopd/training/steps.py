"""What each optimizer step of a distill round trains on: its step source.

A step source hands the training loop, for optimizer step ``s`` of the round, that step's
global micro-batches (lists of :class:`~caopd.training.data.Example`; at most ``grad_accum`` of
them, each at most ``batch_size`` examples over ALL processes). Two sources exist:

- :class:`FixedExamples` (``distill.schedule: rounds``): the round's examples were built by the
  rewrite stage before the job started; the steps walk :func:`~caopd.training.data.round_step_plan`;
- :class:`caopd.training.online.OnlineSource` (``distill.schedule: online``): the examples of a
  step are sampled from the student as it is at that step, verified, scored and rewritten inside
  the job.

:func:`local_batches` gives one process its share of a step: rows ``rank::world`` of every
micro-batch, collated (a process left without rows runs a zero-weight filler, as
:func:`~caopd.training.data.shard` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from caopd.training.data import Batch, Example, collate, shard


class StepSource(Protocol):
    """The examples of every optimizer step of one round (module docstring)."""

    @property
    def n_steps(self) -> int:
        """Optimizer steps of the round."""

    @property
    def n_examples(self) -> int:
        """Examples the round trains on (for the log and the summary)."""

    def micro_batches(self, step: int) -> list[list[Example]]:
        """The global micro-batches of 0-based step ``step`` of the round."""

    def save(self, checkpoint: Path) -> None:
        """Write what a resumed run needs besides model and optimizer into ``checkpoint``."""

    def restore(self, checkpoint: Path | None, step: int) -> None:
        """Prepare to continue at ``step`` from ``checkpoint`` (None: a fresh start)."""

    def publish(self, out: Path) -> dict[str, Any]:
        """Move the source's own records into the artifact ``out``; a summary for the manifest."""


@dataclass
class FixedExamples:
    """The examples of a rounds-mode round and the plan of their micro-batches.

    Attributes:
        examples: the round's examples, in the stored order of ``examples.parquet``.
        plan: ``plan[s]`` = the micro-batches of step ``s``, int64 index arrays into ``examples``
            (:func:`~caopd.training.data.round_step_plan`).
    """

    examples: list[Example]
    plan: list[list[np.ndarray]]

    @property
    def n_steps(self) -> int:
        return len(self.plan)

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def micro_batches(self, step: int) -> list[list[Example]]:
        return [[self.examples[int(i)] for i in indices] for indices in self.plan[step]]

    def save(self, checkpoint: Path) -> None:
        return None

    def restore(self, checkpoint: Path | None, step: int) -> None:
        return None

    def publish(self, out: Path) -> dict[str, Any]:
        return {}


def local_batches(
    micro_batches: Sequence[Sequence[Example]], rank: int, world_size: int, skip_first_tokens: int
) -> list[Batch]:
    """This process's collated rows of each global micro-batch (empty micro-batches dropped)."""
    batches = []
    for micro in micro_batches:
        if not micro:
            continue
        rows, real = shard(np.arange(len(micro)), rank, world_size)
        batches.append(collate([micro[int(i)] for i in rows], skip_first_tokens, real))
    return batches
