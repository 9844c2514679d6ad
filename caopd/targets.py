"""Stage targets(r): verify every rollout and compute the confidence target P_acc per prompt.

DESIGN §1 step 2. Every rollout of round ``r`` is checked with the task's one verifier
(:func:`caopd.tasks.get_task`) against its example's ground truth; its stated confidence is read
with :func:`caopd.confidence.parse_confidence`. Per prompt, ``P_acc = n_correct / k`` where ``k``
is the number of rollouts of that prompt (K, normally the same for every prompt; a prompt with a
different count is allowed and its own ``k`` is recorded).

Output directory of :func:`run_targets`:

- ``rollouts_scored.parquet`` – one row per rollout (:data:`ROLLOUT_COLUMNS`), sorted by
  ``(prompt_id, sample_index)``;
- ``targets.parquet`` – one row per prompt with rollouts (:data:`PROMPT_COLUMNS`), sorted by
  ``prompt_id``.

Both are written by :func:`caopd.parquet.write_frame` with a fixed Arrow schema, no pandas index
or metadata, so equal inputs give byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caopd.artifacts import ROLLOUTS_FILE, SCORED_ROLLOUTS_FILE, TARGETS_FILE
from caopd.confidence import format_confidence, parse_confidence
from caopd.parquet import read_frame, write_frame
from caopd.tasks import get_task
from caopd.tasks.base import TaskExample

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import pyarrow as pa

    from caopd.rollouts.engine import RolloutRecord

ROLLOUT_COLUMNS = (
    "prompt_id",
    "sample_index",
    "correct",
    "stated_confidence",
    "answer",
    "finish_reason",
)
PROMPT_COLUMNS = (
    "prompt_id",
    "k",
    "n_correct",
    "p_acc",
    "mean_stated_confidence",
    "format_adherence",
    "level",
)


def p_acc(n_correct: int, k: int) -> float:
    """The empirical accuracy ``n_correct / k`` of one prompt, as a float in [0, 1].

    Raises:
        ValueError: ``k < 1`` or ``n_correct`` outside ``[0, k]`` (or either not an integer).
    """
    for name, value in (("n_correct", n_correct), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"p_acc: {name} must be an integer, got {value!r}")
    if k < 1:
        raise ValueError(f"p_acc: k must be >= 1 (rollouts of the prompt), got {k}")
    if not 0 <= n_correct <= k:
        raise ValueError(f"p_acc: n_correct must be in [0, k={k}], got {n_correct}")
    return n_correct / k


def _examples_by_id(examples: Sequence[TaskExample]) -> dict[str, TaskExample]:
    by_id: dict[str, TaskExample] = {}
    for example in examples:
        if example.id in by_id:
            raise ValueError(f"duplicate example id {example.id!r} in the prepared split")
        by_id[example.id] = example
    return by_id


def compute_targets(
    examples: Sequence[TaskExample],
    rollouts: Sequence[RolloutRecord],
    task_name: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score ``rollouts`` against ``examples`` and aggregate them per prompt.

    Args:
        examples: the split the rollouts were sampled from (a superset of their prompts: a round
            samples only its slice of the prompts).
        rollouts: the round's rollouts, any order.
        task_name: the task whose verifier and answer extractor are used.

    Returns:
        ``(per_rollout, per_prompt)``:

        - ``per_rollout`` (:data:`ROLLOUT_COLUMNS`), sorted by ``(prompt_id, sample_index)``:
          ``correct`` (bool, the verifier on the rollout's ``text``), ``stated_confidence``
          (float, NaN where none parses), ``answer`` (the extracted answer or None),
          ``finish_reason``.
        - ``per_prompt`` (:data:`PROMPT_COLUMNS`), one row per prompt that has rollouts, sorted
          by ``prompt_id``: ``k`` (its rollouts), ``n_correct``, ``p_acc = n_correct / k``,
          ``mean_stated_confidence`` (over rollouts whose confidence parsed; NaN if none),
          ``format_adherence`` (share of its rollouts whose confidence parsed), ``level``
          (nullable Int64; the example's difficulty level).

    Raises:
        ValueError: a rollout's prompt_id is not among the examples (named), a duplicate
            ``(prompt_id, sample_index)``, or duplicate example ids.
    """
    import pandas as pd

    task = get_task(task_name)
    by_id = _examples_by_id(examples)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for record in sorted(rollouts, key=lambda r: (r.prompt_id, r.sample_index)):
        example = by_id.get(record.prompt_id)
        if example is None:
            raise ValueError(
                f"rollout of prompt_id {record.prompt_id!r} (sample {record.sample_index}) has no "
                f"example in the split: the rollouts were sampled from another data artifact"
            )
        key = (record.prompt_id, record.sample_index)
        if key in seen:
            raise ValueError(
                f"duplicate rollout: prompt_id {record.prompt_id!r} sample {record.sample_index}"
            )
        seen.add(key)
        stated = parse_confidence(record.text)
        rows.append(
            {
                "prompt_id": record.prompt_id,
                "sample_index": int(record.sample_index),
                "correct": bool(task.verify(record.text, example.ground_truth)),
                "stated_confidence": math.nan if stated is None else float(stated),
                "answer": task.extract_answer(record.text),
                "finish_reason": record.finish_reason,
            }
        )
    per_rollout = pd.DataFrame(rows, columns=list(ROLLOUT_COLUMNS))
    per_rollout = per_rollout.astype(
        {"sample_index": "int64", "correct": "bool", "stated_confidence": "float64"}
    )
    # object dtype keeps None for "no answer" (a string dtype would turn it into NaN)
    per_rollout["answer"] = pd.Series([row["answer"] for row in rows], dtype=object)

    prompt_rows: list[dict[str, Any]] = []
    for prompt_id, group in per_rollout.groupby("prompt_id", sort=True):
        k = len(group)
        n_correct = int(group["correct"].sum())
        parsed = group["stated_confidence"].dropna()
        prompt_rows.append(
            {
                "prompt_id": prompt_id,
                "k": k,
                "n_correct": n_correct,
                "p_acc": p_acc(n_correct, k),
                "mean_stated_confidence": float(parsed.mean()) if len(parsed) else math.nan,
                "format_adherence": len(parsed) / k,
                "level": by_id[prompt_id].level,
            }
        )
    per_prompt = pd.DataFrame(prompt_rows, columns=list(PROMPT_COLUMNS))
    per_prompt = per_prompt.astype(
        {
            "k": "int64",
            "n_correct": "int64",
            "p_acc": "float64",
            "mean_stated_confidence": "float64",
            "format_adherence": "float64",
            "level": "Int64",
        }
    )
    return per_rollout, per_prompt


def p_acc_histogram(per_prompt: pd.DataFrame) -> dict[str, int]:
    """Counts of prompts per P_acc value, keyed ``f"{p:.2f}"``.

    Every value ``j / k`` (``j = 0..k``) possible for a ``k`` present in ``per_prompt`` gets a
    key, zeros included, in increasing order; with one K that is the K+1 values. Values that
    format alike (only for K >= 100) share a key.
    """
    values = sorted({j / int(k) for k in set(per_prompt["k"]) for j in range(int(k) + 1)})
    histogram = {format_confidence(v): 0 for v in values}
    for value in per_prompt["p_acc"]:
        histogram[format_confidence(float(value))] += 1
    return histogram


def _mean_or_none(values: Any) -> float | None:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else None


def targets_summary(per_rollout: pd.DataFrame, per_prompt: pd.DataFrame) -> dict[str, Any]:
    """The stage summary (JSON-safe: None where a mean has no values).

    ``mean_p_acc`` averages over prompts; ``mean_stated_confidence`` over rollouts whose
    confidence parsed; ``stated_minus_empirical`` is their difference (positive: overconfident);
    ``format_adherence`` is the share of all rollouts whose confidence parsed; ``k_values`` the
    distinct rollout counts per prompt (one value unless some prompt had a different K).
    """
    mean_p_acc = _mean_or_none(per_prompt["p_acc"])
    mean_stated = _mean_or_none(per_rollout["stated_confidence"])
    n_rollouts = len(per_rollout)
    return {
        "n_prompts": len(per_prompt),
        "n_rollouts": n_rollouts,
        "k_values": sorted(int(k) for k in set(per_prompt["k"])),
        "accuracy": float(per_rollout["correct"].mean()) if n_rollouts else None,
        "mean_p_acc": mean_p_acc,
        "p_acc_histogram": p_acc_histogram(per_prompt),
        "mean_stated_confidence": mean_stated,
        "stated_minus_empirical": (
            mean_stated - mean_p_acc if mean_stated is not None and mean_p_acc is not None else None
        ),
        "format_adherence": (
            float(per_rollout["stated_confidence"].notna().mean()) if n_rollouts else None
        ),
    }


def _rollout_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("stated_confidence", pa.float64()),
            pa.field("answer", pa.string()),
            pa.field("finish_reason", pa.string(), nullable=False),
        ]
    )


def _prompt_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("k", pa.int32(), nullable=False),
            pa.field("n_correct", pa.int32(), nullable=False),
            pa.field("p_acc", pa.float64(), nullable=False),
            pa.field("mean_stated_confidence", pa.float64()),
            pa.field("format_adherence", pa.float64(), nullable=False),
            pa.field("level", pa.int32()),
        ]
    )


def read_targets(targets_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_rollout, per_prompt)`` frames of a targets artifact."""
    targets_dir = Path(targets_dir)
    return read_frame(targets_dir / SCORED_ROLLOUTS_FILE), read_frame(targets_dir / TARGETS_FILE)


def run_targets(
    data_dir: str | Path,
    rollouts_dir: str | Path,
    out_dir: str | Path,
    task_name: str,
) -> dict[str, Any]:
    """The targets stage: score ``rollouts_dir/rollouts.parquet`` against the train split.

    Writes ``rollouts_scored.parquet`` and ``targets.parquet`` into ``out_dir`` (module
    docstring) and returns :func:`targets_summary`.

    Raises:
        ValueError: the rollouts file is empty, or any error of :func:`compute_targets`.
    """
    from caopd.data import read_split
    from caopd.rollouts.files import read_rollouts

    examples = read_split(data_dir, "train")
    rollouts_path = Path(rollouts_dir) / ROLLOUTS_FILE
    rollouts = read_rollouts(rollouts_path)
    if not rollouts:
        raise ValueError(f"{rollouts_path}: no rollouts to score")
    per_rollout, per_prompt = compute_targets(examples, rollouts, task_name)
    write_targets(per_rollout, per_prompt, out_dir)
    return targets_summary(per_rollout, per_prompt)


def write_targets(per_rollout: pd.DataFrame, per_prompt: pd.DataFrame, out_dir: str | Path) -> None:
    """Write the two frames of :func:`compute_targets` as ``rollouts_scored.parquet`` and
    ``targets.parquet`` in ``out_dir`` (created if absent); :func:`read_targets` reads them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_frame(per_rollout, _rollout_schema(), out_dir / SCORED_ROLLOUTS_FILE)
    write_frame(per_prompt, _prompt_schema(), out_dir / TARGETS_FILE)


def run(job: Any) -> dict[str, Any]:
    """Stage ``targets`` (the stage contract, :func:`caopd.job.run_stage`)."""
    return run_targets(job.inputs["data"], job.inputs["rollouts"], job.out, job.params["task"])
