"""The rewrite stage: read the round's split, rollouts, targets (and teacher prefixes), build
the examples (:func:`caopd.rewrite.examples.build_examples`) and write them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.artifacts import CURRICULUM_FILE, EXAMPLES_FILE, PREVIEW_FILE, ROLLOUTS_FILE
from caopd.rewrite.examples import build_examples
from caopd.rewrite.files import preview_rows, write_examples


def run_rewrite(
    data_dir: str | Path,
    rollouts_dir: str | Path,
    targets_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    cfg: Mapping[str, Any],
    prefixes_dir: str | Path | None = None,
    task: str | None = None,
    *,
    sampled_len: bool = False,
) -> dict[str, Any]:
    """The rewrite stage: build the round's examples and write them to ``out_dir``.

    Reads the train split of ``data_dir``, ``rollouts_dir/rollouts.parquet``, the frames of
    :func:`caopd.targets.run_targets` in ``targets_dir`` and the tokenizer at ``tokenizer_dir``
    (``AutoTokenizer.from_pretrained``); writes ``examples.parquet`` (with the ``sampled_len``
    column when ``sampled_len``) and ``preview.jsonl``; returns the summary of
    :func:`build_examples`. With ``prefixes_dir`` (a teacher_rollouts artifact) the examples are
    built on its samples, verified here with ``task``'s verifier. Rollouts sampled under
    ``distill.length_curriculum`` carry its record (:data:`~caopd.artifacts.CURRICULUM_FILE`):
    the completion cap is then lowered with their budget
    (:func:`caopd.training.curriculum.budgets`; summary key ``curriculum_max_completion_length``).
    """
    from transformers import AutoTokenizer

    from caopd.data import read_split
    from caopd.rollouts.files import read_rollouts
    from caopd.targets import read_targets

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    examples = read_split(data_dir, "train")
    rollouts = read_rollouts(Path(rollouts_dir) / ROLLOUTS_FILE)
    per_rollout, per_prompt = read_targets(targets_dir)
    cap = {}
    if (Path(rollouts_dir) / CURRICULUM_FILE).is_file():  # issue 18: the length curriculum's rung
        from caopd.training.curriculum import budgets, read_record

        record = read_record(rollouts_dir)
        cap = {"max_completion_length": budgets(record["length"], record["max_new_tokens"],
                                                cfg["max_completion_length"])[1]}
    prefixes = prefix_scores = None
    if prefixes_dir is not None:
        from caopd.targets import compute_targets

        if task is None:
            raise ValueError("run_rewrite: teacher prefixes need the task (its verifier scores them)")
        prefixes = read_rollouts(Path(prefixes_dir) / ROLLOUTS_FILE)
        prefix_scores = compute_targets(examples, prefixes, task)[0]
    rows, summary = build_examples(
        examples, rollouts, per_prompt, per_rollout, tokenizer, {**cfg, **cap}, prefixes, prefix_scores
    )
    summary.update({f"curriculum_{k}": v for k, v in cap.items()})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_examples(rows, out_dir / EXAMPLES_FILE, sampled_len=sampled_len)
    with open(out_dir / PREVIEW_FILE, "w", encoding="utf-8") as fh:
        for preview in preview_rows(rows, tokenizer):
            fh.write(json.dumps(preview, sort_keys=True, ensure_ascii=False) + "\n")
    return summary


def run(job: Any) -> dict[str, Any]:
    """Stage ``rewrite`` (the stage contract, :func:`caopd.job.run_stage`): the tokenizer is the
    base model's."""
    from caopd.models.base import model_dir

    return run_rewrite(job.inputs["data"], job.inputs["rollouts"], job.inputs["targets"],
                       model_dir(job.inputs["tokenizer"]), job.out, job.params["rewrite"],
                       prefixes_dir=job.inputs.get("prefixes"), task=job.params["task"],
                       sampled_len=job.params.get("sampled_len", False))  # issue 18
