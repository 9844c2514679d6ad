"""Stages rollouts(r) and eval_rollouts: prompts of a prepared split through a rollout engine.

``sample_rollouts`` serves both: training rollouts take round r's slice of the train split with
K samples at ``rollouts.temperature`` (DESIGN §3; the reference samples at 1.0, the embedded
default at 0.8, chosen on the validation split); evaluation takes the eval split, greedy by default. The
output is ``rollouts.parquet`` in the schema of :class:`caopd.rollouts.engine.RolloutRecord`.
A greedy evaluation also writes ``expected_confidence.parquet`` (``prompt_id``, ``sample_index``,
``expected_confidence``): the mean of the confidence the model states at each of its answers,
beside the number it decoded (:mod:`caopd.rollouts.expected_confidence`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from caopd.artifacts import EXPECTED_FILE, ROLLOUTS_FILE
from caopd.data import read_split
from caopd.models.base import model_dir
from caopd.parquet import write_table
from caopd.rollouts.engine import Prompt, RolloutRecord, SamplingConfig, make_engine
from caopd.rollouts.files import write_rollouts


def sample_rollouts(
    *,
    data_dir: str | Path,
    model_artifact: str | Path,
    split: str,
    sampling: SamplingConfig,
    engine: str,
    seed: int,
    out: str | Path,
    start: int = 0,
    stop: int | None = None,
    engine_options: Mapping[str, Any] | None = None,
    threads: int = 1,
    expected_confidence: bool = False,
) -> dict[str, Any]:
    """Sample ``sampling.n`` completions for prompts ``[start, stop)`` of ``split``; write them.

    With ``expected_confidence`` (HF engine only) also write each answer's expected stated
    confidence to :data:`EXPECTED_FILE`.
    """
    examples = read_split(data_dir, split)[start:stop]
    if not examples:
        raise ValueError(f"{data_dir}/{split}.jsonl has no prompts in [{start}, {stop})")
    return sample_prompts(
        [(ex.id, ex.messages) for ex in examples], model_artifact=model_artifact, sampling=sampling,
        engine=engine, seed=seed, out=out, engine_options=engine_options, threads=threads,
        expected_confidence=expected_confidence, split=split,
    )


def sample_prompts(
    prompts: Sequence[Prompt],
    *,
    model_artifact: str | Path,
    sampling: SamplingConfig,
    engine: str,
    seed: int,
    out: str | Path,
    engine_options: Mapping[str, Any] | None = None,
    threads: int = 1,
    expected_confidence: bool = False,
    split: str = "train",
) -> dict[str, Any]:
    """Sample ``sampling.n`` completions of each ``(prompt_id, messages)`` from the model of
    ``model_artifact`` and write them to :data:`ROLLOUTS_FILE` in ``out``; the summary."""
    import torch

    torch.set_num_threads(max(1, threads))
    eng = make_engine(engine, str(model_dir(model_artifact)), **dict(engine_options or {}))
    began = time.perf_counter()
    records = eng.generate(prompts, sampling, seed)
    seconds = time.perf_counter() - began
    write_rollouts(records, Path(out) / ROLLOUTS_FILE)
    n_tokens = sum(len(r.completion_token_ids) for r in records)
    extra = write_expected_confidence(eng, records, sampling.batch_size, out) if expected_confidence else {}
    return {
        "split": split,
        "n_prompts": len(prompts),
        "n_rollouts": len(records),
        "n_completion_tokens": n_tokens,
        "share_length_capped": (
            sum(r.finish_reason == "length" for r in records) / len(records) if records else None
        ),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else None,
        **extra,
    }


def write_expected_confidence(eng: Any, records: Sequence[RolloutRecord], batch_size: int,
                              out: str | Path) -> dict[str, Any]:
    """Score ``records`` with :func:`caopd.rollouts.expected_confidence.expected_confidences`
    on the engine's own model and write them beside the rollouts; a summary for the manifest."""
    import pyarrow as pa

    from caopd.rollouts import expected_confidence as ec

    if not hasattr(eng, "model") or not hasattr(eng, "tokenizer"):
        raise ValueError(f"expected confidence needs the model's token probabilities; engine "
                         f"{type(eng).__name__} does not expose them (use the hf engine)")
    began = time.perf_counter()
    values = ec.expected_confidences(
        eng.model, eng.tokenizer, [r.prompt_token_ids for r in records],
        [r.completion_token_ids for r in records], batch_size=batch_size,
    )
    table = pa.table({
        "prompt_id": pa.array([r.prompt_id for r in records], pa.string()),
        "sample_index": pa.array([r.sample_index for r in records], pa.int32()),
        "expected_confidence": pa.array(values, pa.float64()),
    })
    write_table(table, Path(out) / EXPECTED_FILE, compression="snappy")
    scored = [v for v in values if v is not None]
    return {
        "expected_confidence_rows": len(scored),
        "expected_confidence_mean": round(sum(scored) / len(scored), 6) if scored else None,
        "expected_confidence_seconds": round(time.perf_counter() - began, 3),
    }


def training_sampling(cfg: Mapping[str, Any]) -> tuple[SamplingConfig, dict[str, Any]]:
    """The ``rollouts`` config subtree as ``(SamplingConfig, engine options)``: K samples at
    ``rollouts.temperature`` and ``top_p``; vLLM's tensor parallelism."""
    sampling = SamplingConfig(
        n=cfg["k"],
        temperature=cfg["temperature"],
        top_p=cfg["top_p"],
        max_new_tokens=cfg["max_new_tokens"],
        batch_size=cfg["batch_size"],
    )
    options = {"tensor_parallel_size": cfg["tensor_parallel_size"]} if cfg["engine"] == "vllm" else {}
    return sampling, options


def training_rollouts(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, *, seed: int,
                      threads: int = 1) -> dict[str, Any]:
    """Rollouts(r): K samples per prompt of the round's slice from the current student, from its
    own prompt (the teacher's samples of a ``prefix_source: teacher`` round:
    :mod:`caopd.rollouts.teacher`); under ``distill.length_curriculum`` at the budget of the rung
    decided from the input student."""
    cfg = params["rollouts"]
    start, stop = params["slice"]
    sampling, options = training_sampling(cfg)
    curriculum = {}
    if params.get("length_curriculum") is not None:  # issue 18: the rung decided from the input student
        from dataclasses import replace

        from caopd.training.curriculum import record_metrics, round_curriculum

        record = round_curriculum(params, inputs, out, seed=seed)
        sampling = replace(sampling, max_new_tokens=record["length"])
        curriculum = {**record_metrics(record), "curriculum_entropy": record["entropy"]}
    return {**sample_rollouts(
        data_dir=inputs["data"], model_artifact=inputs["model"], split="train", sampling=sampling,
        engine=cfg["engine"], seed=seed, out=out, start=start, stop=stop, engine_options=options,
        threads=threads,
    ), **curriculum}


def evaluation_rollouts(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, *, seed: int,
                        threads: int = 1) -> dict[str, Any]:
    """eval_rollouts: the final model's answers on the eval split (greedy by default), through
    ``evaluation.engine`` (hf or vllm, the schema of :class:`caopd.rollouts.engine.RolloutRecord`
    either way; absent from the params, the engine is hf: :func:`caopd.plan.plan_variant`)."""
    cfg = params["evaluation"]
    engine = cfg.get("engine", "hf")
    sampling = SamplingConfig(
        n=cfg["n_samples"],
        temperature=cfg["temperature"],
        greedy=cfg["greedy"],
        max_new_tokens=cfg["max_new_tokens"],
        batch_size=cfg["batch_size"],
    )
    options = {"tensor_parallel_size": cfg["tensor_parallel_size"]} if engine == "vllm" else {}
    return sample_rollouts(
        data_dir=inputs["data"], model_artifact=inputs["model"], split=params["split"], sampling=sampling,
        engine=engine, seed=seed, out=out, threads=threads, engine_options=options,
        expected_confidence=cfg["greedy"] and cfg["expected_confidence"],
    )


def run(job: Any) -> dict[str, Any]:
    """Stages ``rollouts`` (a round's training prompts) and ``eval_rollouts`` (a split to
    evaluate), by ``job.stage`` (the stage contract, :func:`caopd.job.run_stage`)."""
    if job.stage == "eval_rollouts":
        return evaluation_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads)
    summary = training_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads)
    curriculum = {k: v for k, v in summary.items() if k.startswith("curriculum_")}  # issue 18
    if curriculum:
        job.log_metrics(curriculum, step=job.round)
    return summary
