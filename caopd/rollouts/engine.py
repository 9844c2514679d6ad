"""The rollout-engine interface and its output record (DESIGN §7).

Every engine takes ``(prompt_id, chat messages)`` pairs and returns :class:`RolloutRecord` rows:
for each prompt, ``n`` samples with sample indices ``0..n-1``, in input order. Prompts are
encoded by :mod:`caopd.rollouts.prompting`; the records are stored by
:mod:`caopd.rollouts.files`.

This module imports no torch, transformers or vLLM: engines are registered by import path in
:data:`ENGINES` and loaded by :func:`make_engine` on demand.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

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
