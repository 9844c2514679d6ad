"""The rollout-engine interface, its output schema and the rollouts Parquet file (DESIGN §7).

Every engine takes ``(prompt_id, chat messages)`` pairs and returns :class:`RolloutRecord` rows:
for each prompt, ``n`` samples with sample indices ``0..n-1``, in input order. The records are
written to a Parquet file with a fixed schema whose bytes depend only on the records (two writes
of the same records are byte-identical), so the ``rollouts`` stage can be checked by sha256.

This module imports no torch, transformers or vLLM: engines are registered by import path in
:data:`ENGINES` and loaded by :func:`make_engine` on demand.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

#: Version of the rollouts file schema; stored in the Parquet schema metadata.
ROLLOUTS_SCHEMA_VERSION = "1"
FINISH_REASONS = ("stop", "length")

Prompt = tuple[str, list[dict[str, str]]]
"""``(prompt_id, messages)``; ``messages`` is a chat, ``[{"role": ..., "content": ...}, ...]``."""


@dataclass(frozen=True)
class SamplingConfig:
    """How rollouts are sampled. Defaults follow the reference: K=8, temperature 1, top_p 1.

    Attributes:
        n: samples per prompt (K).
        temperature: softmax temperature; ignored when ``greedy``.
        top_p: nucleus mass kept, in (0, 1]; 1 disables it. Top-k is always off.
        max_new_tokens: completion length cap; a completion that reaches it has
            ``finish_reason == "length"``.
        greedy: argmax decoding (evaluation); needs ``n == 1``.
        batch_size: most sequences (prompts x samples) one forward batch holds (HF engine; the
            vLLM engine schedules by itself and ignores it).
    """

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"sampling n must be an integer >= 1 (samples per prompt), got {self.n!r}")
        if self.greedy and self.n != 1:
            raise ValueError(
                f"greedy decoding gives the same completion every time: set n: 1 (got n={self.n}) "
                "or set greedy: false to sample"
            )
        if not self.greedy and not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 when sampling (got {self.temperature!r}); "
                "for argmax decoding set greedy: true instead of temperature 0"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables nucleus sampling), got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 (sequences per batch), got {self.batch_size!r}")


@dataclass(frozen=True)
class RolloutRecord:
    """One sampled completion: a row of the rollouts file.

    Attributes:
        prompt_id: the prompt's id (unique within one ``generate`` call).
        sample_index: 0..n-1 within the prompt.
        prompt_token_ids: the chat-templated prompt (generation prompt included), no padding.
        completion_token_ids: exactly the sampled ids, up to and including the EOS token if one
            was generated; no padding.
        text: ``tokenizer.decode(completion_token_ids, skip_special_tokens=True)``.
        finish_reason: ``"stop"`` (ended with an EOS id) or ``"length"`` (hit max_new_tokens).
        seed: the seed passed to the engine's ``generate`` call that produced this record.
    """

    prompt_id: str
    sample_index: int
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    text: str
    finish_reason: Literal["stop", "length"]
    seed: int

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if self.sample_index < 0:
            raise ValueError(f"sample_index must be >= 0, got {self.sample_index}")


class RolloutEngine(Protocol):
    """What every engine in :data:`ENGINES` implements."""

    def generate(self, prompts: Sequence[Prompt], config: SamplingConfig, seed: int) -> list[RolloutRecord]:
        """``config.n`` records per prompt, ordered by input prompt then sample index."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine: where its class lives and what it runs on."""

    name: str
    target: str  # "module:Class", imported on first use
    devices: tuple[str, ...]
    description: str

    def load(self) -> type:
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


ENGINES: dict[str, EngineSpec] = {
    "hf": EngineSpec(
        name="hf",
        target="caopd.rollouts.hf:HFEngine",
        devices=("cpu", "cuda"),
        description="transformers generate(): batched, left padding, KV cache",
    ),
    "vllm": EngineSpec(
        name="vllm",
        target="caopd.rollouts.vllm_engine:VLLMEngine",
        devices=("cuda",),
        description="vllm.LLM with SamplingParams(n=K); optional dependency (pip install caopd[vllm])",
    ),
}


def make_engine(name: str, model_path: str | Path, **options: Any) -> RolloutEngine:
    """Instantiate the engine registered as ``name`` on the model at ``model_path``.

    ``options`` go to the engine's constructor (``dtype``, ``device``, ``tensor_parallel_size``...).
    """
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of {sorted(ENGINES)}")
    return ENGINES[name].load()(str(model_path), **options)


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Raise ``ValueError`` on duplicate prompt ids or a prompt without messages."""
    seen: set[str] = set()
    for prompt_id, messages in prompts:
        if prompt_id in seen:
            raise ValueError(f"duplicate prompt_id {prompt_id!r}: prompt ids must be unique per generate() call")
        if not messages:
            raise ValueError(f"prompt {prompt_id!r} has no chat messages")
        seen.add(prompt_id)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]], **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template, generation prompt added.

    transformers 5 returns a ``BatchEncoding`` from ``apply_chat_template(tokenize=True)``
    (4.x returned a list); both are accepted.
    """
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **template_kwargs)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        if len(out) != 1:
            raise ValueError(f"chat template returned {len(out)} sequences for one conversation")
        out = out[0]
    return [int(i) for i in out]


def encode_checked(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    max_positions: int | None,
    **template_kwargs: Any,
) -> list[list[int]]:
    """Chat-templated ids of every prompt (generation prompt added); a ``ValueError`` names the
    first prompt that cannot fit ``max_new_tokens`` more tokens in ``max_positions``."""
    check_prompts(prompts)
    encoded = [chat_prompt_ids(tokenizer, messages, **template_kwargs) for _, messages in prompts]
    for (prompt_id, _), ids in zip(prompts, encoded):
        if max_positions is not None and len(ids) + max_new_tokens > max_positions:
            raise ValueError(
                f"prompt {prompt_id!r} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                f"it exceeds the model's {max_positions} positions: lower max_new_tokens or shorten the prompt"
            )
    return encoded


def resolve_stop_ids(tokenizer_eos: int | None, checkpoint_eos: int | Sequence[int] | None) -> list[int]:
    """Ids that end a completion: the tokenizer's eos, then the checkpoint generation config's.

    Qwen chat models list ``<|im_end|>`` and ``<|endoftext|>`` in ``generation_config.json``;
    vLLM stops on both, and so do our engines. Order kept, duplicates dropped.
    """
    if checkpoint_eos is None:
        checkpoint_eos = []
    elif isinstance(checkpoint_eos, int):
        checkpoint_eos = [checkpoint_eos]
    ids = ([tokenizer_eos] if tokenizer_eos is not None else []) + [int(i) for i in checkpoint_eos]
    if not ids:
        raise ValueError("neither the tokenizer nor generation_config.json names an eos token")
    return list(dict.fromkeys(ids))


# --- the rollouts file -------------------------------------------------------------------------

_COLUMNS = (
    "prompt_id",
    "sample_index",
    "prompt_token_ids",
    "completion_token_ids",
    "text",
    "finish_reason",
    "seed",
)


def _schema():  # -> pyarrow.Schema
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("completion_token_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
        ],
        metadata={"caopd.rollouts.schema_version": ROLLOUTS_SCHEMA_VERSION},
    )


def write_rollouts(records: Sequence[RolloutRecord], path: str | Path) -> Path:
    """Write ``records`` to a Parquet file at ``path`` (atomically: temp file + rename).

    Rows are sorted by ``(prompt_id, sample_index)``; schema, row-group size and zstd compression
    are fixed and no pandas metadata is stored, so the bytes depend only on the records.
    """
    from caopd.parquet import table_from_columns, write_table

    ordered = sorted(records, key=lambda r: (r.prompt_id, r.sample_index))
    keys = [(r.prompt_id, r.sample_index) for r in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate (prompt_id, sample_index) in rollout records")
    columns = {name: [getattr(r, name) for r in ordered] for name in _COLUMNS}
    return write_table(table_from_columns(columns, _schema()), path)


def read_rollouts(path: str | Path) -> list[RolloutRecord]:
    """Read a file written by :func:`write_rollouts` (rows in file order)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if tuple(table.column_names) != _COLUMNS:
        raise ValueError(f"{path}: not a rollouts file; columns {table.column_names}, expected {list(_COLUMNS)}")
    version = (table.schema.metadata or {}).get(b"caopd.rollouts.schema_version", b"?").decode()
    if version != ROLLOUTS_SCHEMA_VERSION:
        raise ValueError(f"{path}: rollouts schema version {version}, this code reads {ROLLOUTS_SCHEMA_VERSION}")
    return [RolloutRecord(**row) for row in table.to_pylist()]
