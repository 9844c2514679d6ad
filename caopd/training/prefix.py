"""One prompt pass per rollout group: the K completions of a prompt run on its shared KV cache.

All K rollouts of a prompt share the student prompt, and (the rewrite stage writes one teacher
prompt per prompt) the teacher prompt. The per-example path (:func:`~caopd.training.data.collate`)
encodes each prompt K times in each model; here each distinct prompt of a micro-batch is encoded
once and its completions continue from its cache:

- the *prefix* of a prompt of length L is its first L − 1 tokens; the prefixes of the G distinct
  prompts are right-padded to Tensor[G, P] and run with ``use_cache=True``;
- the cache is expanded to the B rows (``batch_select_indices(group)``: an index, so in the
  backward the gradients of the K rows sharing a prefix are summed into it — the student's
  gradients flow through the shared prefix);
- each row's *suffix* is the prompt's last token followed by the completion without its last
  token (c tokens); its hidden state at suffix position j predicts completion token j, exactly
  the state at sequence position L − 1 + j of the per-example path. Suffixes are right-padded to
  Tensor[B, S] and run with position ids ``L_g − 1 + j`` and the attention mask
  ``[prefix mask of the row's group, suffix mask]`` (a padded prefix slot is masked, so a padded
  prefix is attended exactly like an unpadded one).

Equal to the per-example path up to float summation order (a test checks hidden states, loss and
student gradients). Rows are grouped by identical prompt ids, so any mix of examples is valid: a
micro-batch of whole prompt groups gains most, one of distinct prompts gains nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from caopd.training.data import PAD_ID, Batch, DistillExample, completion_targets


@dataclass(frozen=True)
class PlainInputs:
    """One model's per-example inputs: right-padded ids Tensor[B, T], mask Tensor[B, T] and the
    flat positions Tensor[N] (into [B·T]) of the hidden states predicting the loss tokens."""

    input_ids: Tensor
    attention_mask: Tensor
    positions: Tensor

    def hidden(self, base_model: nn.Module) -> Tensor:
        """The final hidden states at ``positions``: Tensor[N, H]."""
        out = base_model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                         use_cache=False)
        return gather_positions(out.last_hidden_state, self.positions)


@dataclass(frozen=True)
class SharedPrefixInputs:
    """One model's inputs with one prefix per distinct prompt (module docstring).

    Attributes:
        prefix_ids, prefix_mask: Tensor[G, P] int64, the G distinct prompts without their last
            token, right-padded (P may be 0: every prompt one token long).
        suffix_ids, suffix_mask: Tensor[B, S] int64, per row the prompt's last token and the
            completion without its last token, right-padded.
        group: Tensor[B] int64, the prefix row of each row.
        positions: Tensor[N] int64, flat indices into [B·S] of the states predicting the
            completion tokens, row by row in completion order (the order of ``collate``).
    """

    prefix_ids: Tensor
    prefix_mask: Tensor
    suffix_ids: Tensor
    suffix_mask: Tensor
    group: Tensor
    positions: Tensor

    def to(self, device: torch.device | str) -> SharedPrefixInputs:
        return SharedPrefixInputs(**{k: v.to(device) for k, v in self.__dict__.items()})

    def hidden(self, base_model: nn.Module) -> Tensor:
        """The final hidden states at ``positions``: Tensor[N, H] (prefix pass, then suffix pass)."""
        if self.prefix_ids.shape[1] == 0:
            out = base_model(input_ids=self.suffix_ids, attention_mask=self.suffix_mask,
                             use_cache=False)
            return gather_positions(out.last_hidden_state, self.positions)
        prefix = base_model(input_ids=self.prefix_ids, attention_mask=self.prefix_mask,
                            use_cache=True)
        cache = getattr(prefix, "cache", None) or getattr(prefix, "past_key_values", None)
        if cache is None:
            raise RuntimeError(
                f"{type(base_model).__name__} returned no KV cache for the prompt prefixes (is "
                "gradient checkpointing on? it disables the cache); distill.batching: "
                "prompt_groups needs it, use batching: examples"
            )
        cache.batch_select_indices(self.group)
        prefix_len = self.prefix_mask.sum(dim=1)[self.group]
        width = self.suffix_ids.shape[1]
        position_ids = prefix_len.unsqueeze(1) + torch.arange(width, device=prefix_len.device)
        mask = torch.cat([self.prefix_mask[self.group], self.suffix_mask], dim=1)
        out = base_model(
            input_ids=self.suffix_ids, attention_mask=mask, position_ids=position_ids,
            use_cache=False, **{_cache_argument(base_model): cache},
        )
        return gather_positions(out.last_hidden_state, self.positions)


def gather_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """Rows ``positions`` of the flattened hidden states: Tensor[B, T, H], [N] -> Tensor[N, H]."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)


def _cache_argument(base_model: nn.Module) -> str:
    """``cache`` (transformers ≥ 5.2x) or ``past_key_values`` (older 5.x): the forward's name."""
    parameters = inspect.signature(base_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def shared_prefix_inputs(
    sequences: Sequence[np.ndarray], prompt_lens: Sequence[int], completion_lens: Sequence[int]
) -> SharedPrefixInputs:
    """Group rows by identical prompts and build the prefix / suffix tensors (module docstring).

    Args:
        sequences: per row, int64 ids [L_r + c_r]: a prompt of L_r ≥ 1 tokens, then c_r
            completion tokens.
        prompt_lens, completion_lens: L_r and c_r per row.

    Raises:
        ValueError: a prompt of length < 1, or lengths that do not add up.
    """
    groups: dict[bytes, int] = {}
    prompts: list[np.ndarray] = []
    group_of_row: list[int] = []
    suffixes: list[np.ndarray] = []
    for seq, length, c in zip(sequences, prompt_lens, completion_lens):
        if length < 1 or length + c != len(seq):
            raise ValueError(f"row of {len(seq)} ids: prompt length {length} + completion {c}")
        prompt = np.asarray(seq[:length], dtype=np.int64)
        key = prompt.tobytes()
        if key not in groups:
            groups[key] = len(prompts)
            prompts.append(prompt)
        group_of_row.append(groups[key])
        suffixes.append(np.asarray(seq[length - 1 : length + c - 1] if c else seq[length - 1 :],
                                   dtype=np.int64))
    prefix_ids, prefix_mask = _right_pad([p[:-1] for p in prompts])
    suffix_ids, suffix_mask = _right_pad(suffixes)
    width = suffix_ids.shape[1]
    positions = [row * width + j for row, c in enumerate(completion_lens) for j in range(c)]
    return SharedPrefixInputs(
        prefix_ids=prefix_ids,
        prefix_mask=prefix_mask,
        suffix_ids=suffix_ids,
        suffix_mask=suffix_mask,
        group=torch.tensor(group_of_row, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
    )


def _right_pad(sequences: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Tensor[B, max len] ids (:data:`PAD_ID` in padded slots) and a 0/1 mask; width may be 0."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.from_numpy(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass(frozen=True)
class GroupedBatch:
    """One process's micro-batch on shared prefixes: :class:`~caopd.training.data.Batch` with
    each model's ids replaced by :class:`SharedPrefixInputs` (same ``weights``, ``tokens``,
    ``sampled`` and statistics, positions in the same order)."""

    student_inputs: SharedPrefixInputs
    teacher_inputs: SharedPrefixInputs
    weights: Tensor
    p_acc: Tensor
    has_confidence: Tensor
    real: Tensor
    tokens: Tensor
    sampled: Tensor

    def to(self, device: torch.device | str) -> GroupedBatch:
        return GroupedBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    @property
    def n_loss_tokens(self) -> int:
        """Number of completion tokens with nonzero weight."""
        return int((self.weights != 0).sum())


def collate_groups(examples: Sequence[DistillExample], skip_first_tokens: int, real: bool = True) -> GroupedBatch:
    """:func:`~caopd.training.data.collate` on shared prefixes: the same weights, statistics and
    position order; ``real=False`` (a filler batch) zeroes every weight."""
    if not examples:
        raise ValueError("collate_groups needs at least one example")
    c = [ex.completion_len for ex in examples]
    student = shared_prefix_inputs(
        [ex.student_ids for ex in examples], [len(ex.student_ids) - n for ex, n in zip(examples, c)], c
    )
    teacher = shared_prefix_inputs(
        [ex.teacher_ids for ex in examples], [len(ex.teacher_ids) - n for ex, n in zip(examples, c)], c
    )
    weights = torch.tensor(
        [float(real and j >= skip_first_tokens) for n in c for j in range(n)], dtype=torch.float32
    )
    return GroupedBatch(
        student_inputs=student,
        teacher_inputs=teacher,
        weights=weights,
        p_acc=torch.tensor([ex.p_acc for ex in examples], dtype=torch.float64),
        has_confidence=torch.tensor([ex.has_confidence for ex in examples]),
        real=torch.full((len(examples),), real),
        **dict(zip(("tokens", "sampled"), completion_targets(examples))),
    )


def model_inputs(batch: Batch | GroupedBatch) -> tuple[PlainInputs | SharedPrefixInputs,
                                                        PlainInputs | SharedPrefixInputs]:
    """``(student inputs, teacher inputs)`` of either kind of batch."""
    if isinstance(batch, GroupedBatch):
        return batch.student_inputs, batch.teacher_inputs
    return (
        PlainInputs(batch.student_ids, batch.student_mask, batch.student_positions),
        PlainInputs(batch.teacher_ids, batch.teacher_mask, batch.teacher_positions),
    )
