"""What each optimizer step of a distill round trains on: its step source.

A step source hands the training loop, for optimizer step ``s`` of the round, that step's
global micro-batches (lists of :class:`~caopd.training.data.DistillExample`; at most ``grad_accum`` of
them, each at most ``batch_size`` examples over ALL processes). Two sources exist:

- :class:`FixedExamples` (``distill.schedule: rounds``): the round's examples were built by the
  rewrite stage before the job started; the steps walk :func:`~caopd.training.data.round_step_plan`
  (``distill.batching: examples``) or :func:`round_group_plan` (``prompt_groups``);
- :class:`caopd.training.online_source.OnlineSource` (``distill.schedule: online``): the examples of a
  step are sampled from the student as it is at that step, verified, scored and rewritten inside
  the job.

:func:`local_batches` gives one process its share of a step: rows ``rank::world`` of every
micro-batch, collated per example (:func:`~caopd.training.data.collate`) or on shared prompt
prefixes (:func:`~caopd.training.prefix.collate_groups`); a process left without rows runs a
zero-weight filler, as :func:`~caopd.training.data.shard` describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from caopd.training.data import Batch, DistillExample, collate, epoch_order, shard
from caopd.training.prefix import GroupedBatch, collate_groups


class StepSource(Protocol):
    """The examples of every optimizer step of one round (module docstring)."""

    @property
    def n_steps(self) -> int:
        """Optimizer steps of the round."""

    @property
    def n_examples(self) -> int:
        """Examples the round trains on (for the log and the summary)."""

    def micro_batches(self, step: int) -> list[list[DistillExample]]:
        """The global micro-batches of 0-based step ``step`` of the round."""

    def save(self, checkpoint: Path) -> None:
        """Write what a resumed run needs besides model and optimizer into ``checkpoint``."""

    def restore(self, checkpoint: Path | None, step: int) -> None:
        """Prepare to continue at ``step`` from ``checkpoint`` (None: a fresh start)."""

    def publish(self, out: Path) -> dict[str, Any]:
        """Move the source's own records into the artifact ``out``; a summary for the manifest."""

    def curve_fields(self, step: int) -> dict[str, float]:
        """Extra float columns of step ``step``'s curve row ({} for none; every step the same
        names, :data:`caopd.training.curves.OPTIONAL_CURVE_FLOATS`)."""


@dataclass
class FixedExamples:
    """The examples of a rounds-mode round and the plan of their micro-batches.

    Attributes:
        examples: the round's examples, in the stored order of ``examples.parquet``.
        plan: ``plan[s]`` = the micro-batches of step ``s``, int64 index arrays into ``examples``
            (:func:`~caopd.training.data.round_step_plan`).
    """

    examples: list[DistillExample]
    plan: list[list[np.ndarray]]

    @property
    def n_steps(self) -> int:
        return len(self.plan)

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def micro_batches(self, step: int) -> list[list[DistillExample]]:
        return [[self.examples[int(i)] for i in indices] for indices in self.plan[step]]

    def save(self, checkpoint: Path) -> None:
        return None

    def restore(self, checkpoint: Path | None, step: int) -> None:
        return None

    def publish(self, out: Path) -> dict[str, Any]:
        return {}

    def curve_fields(self, step: int) -> dict[str, float]:
        return {}


def local_rows(micro_batches: Sequence[Sequence[Any]], rank: int, world_size: int) -> list[tuple[np.ndarray, bool]]:
    """``(rows, real)`` of :func:`~caopd.training.data.shard` for each non-empty micro-batch."""
    return [shard(np.arange(len(micro)), rank, world_size) for micro in micro_batches if len(micro)]


def local_batches(
    micro_batches: Sequence[Sequence[DistillExample]],
    rank: int,
    world_size: int,
    skip_first_tokens: int,
    grouped: bool = False,
) -> list[Batch | GroupedBatch]:
    """This process's collated rows of each global micro-batch (empty micro-batches dropped);
    ``grouped``: on shared prompt prefixes (:func:`~caopd.training.prefix.collate_groups`)."""
    collate_fn = collate_groups if grouped else collate
    micros = [micro for micro in micro_batches if micro]
    return [
        collate_fn([micro[int(i)] for i in rows], skip_first_tokens, real)
        for micro, (rows, real) in zip(micros, local_rows(micros, rank, world_size))
    ]


def prompt_groups(prompt_ids: Sequence[str]) -> list[np.ndarray]:
    """Example indices grouped by prompt id, groups in order of first appearance: [int64 array]."""
    groups: dict[str, list[int]] = {}
    for index, prompt_id in enumerate(prompt_ids):
        groups.setdefault(prompt_id, []).append(index)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]


def round_group_plan(
    groups: Sequence[np.ndarray], batch_size: int, grad_accum: int, epochs: int, seed: int
) -> list[list[np.ndarray]]:
    """:func:`~caopd.training.data.round_step_plan` over whole prompt groups.

    Each epoch visits the groups in an order drawn from ``(seed, epoch)``
    (:func:`~caopd.training.data.epoch_order` over group indices) and packs consecutive groups
    into micro-batches of at most ``batch_size`` examples (a group larger than ``batch_size`` is
    a micro-batch of its own); ``grad_accum`` micro-batches make a step. With groups of K
    examples and ``batch_size`` a multiple of K this gives as many steps as the example plan.

    Returns:
        ``plan[s]`` = the micro-batches of step s, int64 arrays of example indices.
    """
    micro: list[np.ndarray] = []
    for epoch in range(epochs):
        current: list[np.ndarray] = []
        for g in epoch_order(len(groups), seed, epoch):
            group = groups[int(g)]
            if current and sum(len(x) for x in current) + len(group) > batch_size:
                micro.append(np.concatenate(current))
                current = []
            current.append(group)
        if current:
            micro.append(np.concatenate(current))
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]
