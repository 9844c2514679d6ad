"""Rollout engines: K sampled completions per prompt from the current student (DESIGN §7).

``make_engine("hf" | "vllm", model_path, **options).generate(prompts, SamplingConfig(...), seed)``
returns :class:`RolloutRecord` rows; :func:`write_rollouts` / :func:`read_rollouts` store them as
Parquet (:mod:`caopd.rollouts.files`). Importing this package is cheap: the engines (torch, transformers, vllm) are imported
only when :func:`make_engine` builds one.
"""

from __future__ import annotations

from caopd.rollouts.engine import (
    ENGINES,
    EngineSpec,
    Prompt,
    RolloutEngine,
    RolloutRecord,
    SamplingConfig,
    make_engine,
)
from caopd.rollouts.files import ROLLOUTS_SCHEMA_VERSION, read_rollouts, write_rollouts

__all__ = [
    "ENGINES",
    "ROLLOUTS_SCHEMA_VERSION",
    "EngineSpec",
    "Prompt",
    "RolloutEngine",
    "RolloutRecord",
    "SamplingConfig",
    "make_engine",
    "read_rollouts",
    "write_rollouts",
]
