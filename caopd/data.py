"""Stage prepare_data: a task's splits as JSONL of :class:`caopd.tasks.base.TaskExample` rows.

Output directory layout: ``train.jsonl``, ``val.jsonl``, ``eval.jsonl`` (one example per line,
sorted keys, in split order). ``val`` is for choosing settings; ``eval`` is never tuned on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.artifacts import split_file
from caopd.tasks import get_task
from caopd.tasks.base import TaskExample, TaskDataError

SPLITS = ("train", "val", "eval")


def write_split(path: str | Path, examples: list[TaskExample]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_row(), sort_keys=True, ensure_ascii=False) + "\n")


def read_split(data_dir: str | Path, split: str) -> list[TaskExample]:
    """The examples of one split of a prepare_data artifact."""
    path = Path(data_dir) / split_file(split)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                rows.append(TaskExample.from_row(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise TaskDataError(f"{path}:{lineno}: not a prepared example ({err})") from err
    return rows


def prepare_data(params: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """Load the configured task's splits and write them to ``out``; return split statistics."""
    task_cfg = params["task"]
    task = get_task(task_cfg["name"])
    splits = task.load_splits(task_cfg, params["seed"])
    out = Path(out)
    summary: dict[str, Any] = {"task": task_cfg["name"], "task_version": task.version}
    for split in SPLITS:
        examples = splits.get(split, [])
        for i, ex in enumerate(examples):
            if not ex.ground_truth:
                raise TaskDataError(f"{split} row {i} ({ex.id}): no ground truth")
        write_split(out / split_file(split), examples)
        summary[f"n_{split}"] = len(examples)
        levels = Counter(ex.level for ex in examples if ex.level is not None)
        if levels:
            summary[f"{split}_levels"] = {str(k): v for k, v in sorted(levels.items())}
    return summary


def run(job: Any) -> dict[str, Any]:
    """Stage ``prepare_data`` (the stage contract, :func:`caopd.job.run_stage`)."""
    return prepare_data(job.params, job.out)
