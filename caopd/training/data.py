"""Batches for the distill stage: the examples table, the step plan, sharding and collation.

The plan is pure arithmetic on example indices, so every process of a data-parallel run derives
the same global batches with no communication, and a resumed run finds its place from the
optimizer-step counter alone:

- each epoch visits the round's examples in an order drawn from ``(seed, epoch)``
  (:func:`epoch_order`) and cuts it into micro-batches of ``batch_size`` examples, the last one
  possibly shorter;
- a round's micro-batches are the epochs' micro-batches in sequence, taken ``grad_accum`` at a
  time per optimizer step (the last step of a round may take fewer), hence
  ``steps_in_round(n) = ceil(ceil(n / batch_size) * epochs / grad_accum)``;
- ``batch_size`` counts examples per micro-batch over ALL processes: process ``rank`` of
  ``world`` takes rows ``rank::world`` of each micro-batch (:func:`shard`), so the optimisation
  (and the step count, which enters the LR schedule) does not depend on how many processes run it.

:func:`collate` turns a list of examples into right-padded id tensors plus, for every completion
token, the flat index of the student's and the teacher's hidden state that predicts it (position
t predicts token t+1), aligned by completion index, and a loss weight that is 0 for the first
``skip_first_tokens`` completion tokens of each example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from caopd.artifacts import SAMPLED_LEN, TRAINING_COLUMNS
from caopd.training.loss import completion_loss_mask

#: Id written into padded slots. Padding sits after every real token (right padding) and is
#: masked out, so under causal attention its value never reaches a real position.
PAD_ID = 0


@dataclass(frozen=True)
class DistillExample:
    """One training example: the same completion after a student and a teacher prompt.

    Attributes:
        student_ids: int64 array [L_s], student prompt + completion.
        teacher_ids: int64 array [L_t], teacher prompt + the same completion ids.
        completion_len: c, the completion is the last c ids of both.
        p_acc: the round's empirical accuracy of the example's prompt.
        has_confidence: the sampled completion stated a parseable confidence.
        prompt_id: the prompt the completion was sampled for (its rollout group).
        sampled_len: how many leading completion ids the student sampled (the rest, CaOPD's
            ``Confidence:`` suffix and EOS, the rewrite wrote); None when the examples file does
            not record it (the ``sampled_len`` column, written for the sampled-token estimators).
    """

    student_ids: np.ndarray
    teacher_ids: np.ndarray
    completion_len: int
    p_acc: float
    has_confidence: bool
    prompt_id: str = ""
    sampled_len: int | None = None


def example_from_row(row: Mapping) -> DistillExample:
    name = f"example (prompt_id={row['prompt_id']!r}, sample_index={row['sample_index']})"
    student = np.asarray(row["student_input_ids"], dtype=np.int64)
    teacher = np.asarray(row["teacher_input_ids"], dtype=np.int64)
    c = int(row["completion_len"])
    for role, ids, prompt_len in (
        ("student", student, row["student_prompt_len"]),
        ("teacher", teacher, row["teacher_prompt_len"]),
    ):
        if prompt_len < 1:
            raise ValueError(f"{name}: {role}_prompt_len={prompt_len}; a prompt needs >= 1 token")
        if prompt_len + c != len(ids):
            raise ValueError(
                f"{name}: {role}_prompt_len {prompt_len} + completion_len {c} != "
                f"len({role}_input_ids) {len(ids)}"
            )
    if c < 0:
        raise ValueError(f"{name}: completion_len={c} is negative")
    if c and not np.array_equal(student[-c:], teacher[-c:]):
        raise ValueError(f"{name}: the student's and the teacher's completion ids differ")
    sampled_len = row.get("sampled_len")
    if sampled_len is not None and not 0 <= sampled_len <= c:
        raise ValueError(f"{name}: sampled_len={sampled_len} outside [0, completion_len {c}]")
    confidence = row["stated_confidence"]
    return DistillExample(
        student_ids=student,
        teacher_ids=teacher,
        completion_len=c,
        p_acc=float(row["p_acc"]),
        has_confidence=confidence is not None and not math.isnan(confidence),
        prompt_id=str(row["prompt_id"]),
        sampled_len=None if sampled_len is None else int(sampled_len),
    )


def load_examples(path: str | Path, need_sampled_len: bool = False) -> list[DistillExample]:
    """Read ``examples.parquet`` (the rewrite stage's output) in its stored row order, with its
    optional ``sampled_len`` column when present.

    Raises:
        ValueError: a missing column (``sampled_len`` too when ``need_sampled_len``: the
            sampled-token estimators need it), or a row whose lengths or completions do not
            line up.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = list(TRAINING_COLUMNS) + [SAMPLED_LEN] * (SAMPLED_LEN in table.column_names)
    missing = [c for c in TRAINING_COLUMNS + (SAMPLED_LEN,) * need_sampled_len
               if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: examples table lacks columns {missing}"
                         + (" (distill.estimator needs the rewrite to record sampled_len)"
                            if SAMPLED_LEN in missing else ""))
    return [example_from_row(row) for row in table.select(columns).to_pylist()]


def micro_batches_per_epoch(n_examples: int, batch_size: int) -> int:
    """``ceil(n_examples / batch_size)``: the last micro-batch of an epoch may be short."""
    return -(-n_examples // batch_size)


def steps_in_round(n_examples: int, batch_size: int, grad_accum: int, epochs: int) -> int:
    """Optimizer steps of one round: ``ceil(ceil(n / batch_size) * epochs / grad_accum)``."""
    return -(-micro_batches_per_epoch(n_examples, batch_size) * epochs // grad_accum)


def total_optimizer_steps(
    schedule: Mapping, batch_size: int, grad_accum: int, epochs: int
) -> int:
    """Σ over rounds of :func:`steps_in_round` for ``schedule["examples_per_round"]``.

    The length of the LR schedule, which runs across rounds.
    """
    return sum(
        steps_in_round(n, batch_size, grad_accum, epochs) for n in schedule["examples_per_round"]
    )


def epoch_order(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n_examples)`` drawn from ``(seed, epoch)`` alone: int64 [n]."""
    return np.random.default_rng([seed, epoch]).permutation(n_examples)


def round_step_plan(
    n_examples: int, batch_size: int, grad_accum: int, epochs: int, seed: int
) -> list[list[np.ndarray]]:
    """The global micro-batches of every optimizer step of a round.

    Returns:
        ``plan[s]`` = the micro-batches of step s (1..grad_accum of them), each an int64 array of
        example indices (global over processes); ``len(plan) == steps_in_round(...)``.
    """
    micro: list[np.ndarray] = []
    for epoch in range(epochs):
        order = epoch_order(n_examples, seed, epoch)
        micro.extend(order[i : i + batch_size] for i in range(0, n_examples, batch_size))
    return [micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum)]


def shard(indices: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, bool]:
    """This process's rows of a global micro-batch: ``indices[rank::world_size]``.

    Returns:
        ``(rows, real)``. A process left with no rows (a micro-batch smaller than the world)
        gets the micro-batch's first example with ``real=False``: it runs the forward and
        backward every DDP process must run, with all loss weights 0.
    """
    rows = indices[rank::world_size]
    if len(rows):
        return rows, True
    return indices[:1], False


@dataclass(frozen=True)
class Batch:
    """One process's micro-batch, right-padded.

    Attributes:
        student_ids, student_mask: Tensor[B, T_s] int64 ids and 0/1 attention mask.
        teacher_ids, teacher_mask: Tensor[B, T_t].
        student_positions: Tensor[N] int64, flat indices into the [B·T_s] student hidden states
            of the positions predicting the N completion tokens (row by row, in completion
            order).
        teacher_positions: Tensor[N] int64, the same tokens' predicting positions in [B·T_t].
        weights: Tensor[N] float32, 1 for loss tokens, 0 for each example's first
            ``skip_first_tokens`` completion tokens (and for every token of a filler batch).
        tokens, sampled: Tensor[N] int64 / bool, the completion token each position predicts
            and whether the student sampled it (:func:`completion_targets`).
        p_acc: Tensor[B] float64; has_confidence: Tensor[B] bool.
        real: Tensor[B] bool, False for the filler row of :func:`shard`.
    """

    student_ids: Tensor
    student_mask: Tensor
    teacher_ids: Tensor
    teacher_mask: Tensor
    student_positions: Tensor
    teacher_positions: Tensor
    weights: Tensor
    p_acc: Tensor
    has_confidence: Tensor
    real: Tensor
    tokens: Tensor
    sampled: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    @property
    def n_loss_tokens(self) -> int:
        """Number of completion tokens with nonzero weight."""
        return int((self.weights != 0).sum())


def _pad(sequences: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Right-pad to Tensor[B, T] ids (:data:`PAD_ID`) and a 0/1 mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.from_numpy(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def _predicting_positions(
    mask: Tensor, lengths: Sequence[int], completion_lens: Sequence[int], skip_first: int
) -> tuple[Tensor, Tensor]:
    """Flat positions predicting each row's completion tokens, and their 0/1 loss weights.

    Completion tokens of a row of length L sit at [L − c, L); the hidden states that predict
    them at [L − c − 1, L − 1). Shapes: mask Tensor[B, T] -> (Tensor[N] int64, Tensor[N] f32).
    """
    completion = torch.zeros_like(mask)
    for row, (length, c) in enumerate(zip(lengths, completion_lens)):
        completion[row, length - c : length] = 1
    keep = completion_loss_mask(completion, skip_first)
    targets = completion.flatten().nonzero().squeeze(1)
    return targets - 1, keep.flatten()[targets].to(torch.float32)


def completion_targets(examples: Sequence[DistillExample]) -> tuple[Tensor, Tensor]:
    """Per completion position, row by row in completion order (the positions' order): the
    token it predicts, Tensor[N] int64, and whether the student sampled it (its index below the
    example's ``sampled_len``; every position when that is None), Tensor[N] bool."""
    tokens = [torch.from_numpy(ex.student_ids[len(ex.student_ids) - ex.completion_len :]) for ex in examples]
    sampled = [torch.arange(ex.completion_len) < (ex.completion_len if ex.sampled_len is None else ex.sampled_len)
               for ex in examples]
    return torch.cat(tokens).long(), torch.cat(sampled)


def collate(examples: Sequence[DistillExample], skip_first_tokens: int, real: bool = True) -> Batch:
    """Right-pad ``examples`` and locate the hidden states predicting their completion tokens.

    ``real=False`` (a filler batch, see :func:`shard`) zeroes every weight.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    student_ids, student_mask = _pad([ex.student_ids for ex in examples])
    teacher_ids, teacher_mask = _pad([ex.teacher_ids for ex in examples])
    c = [ex.completion_len for ex in examples]
    s_pos, weights = _predicting_positions(
        student_mask, [len(ex.student_ids) for ex in examples], c, skip_first_tokens
    )
    t_pos, _ = _predicting_positions(
        teacher_mask, [len(ex.teacher_ids) for ex in examples], c, skip_first_tokens
    )
    if not real:
        weights = torch.zeros_like(weights)
    return Batch(
        student_ids=student_ids,
        student_mask=student_mask,
        teacher_ids=teacher_ids,
        teacher_mask=teacher_mask,
        student_positions=s_pos,
        teacher_positions=t_pos,
        weights=weights,
        p_acc=torch.tensor([ex.p_acc for ex in examples], dtype=torch.float64),
        has_confidence=torch.tensor([ex.has_confidence for ex in examples]),
        real=torch.full((len(examples),), real),
        **dict(zip(("tokens", "sampled"), completion_targets(examples))),
    )
