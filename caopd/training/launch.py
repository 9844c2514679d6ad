"""Command-line entry of the distill stage, what ``accelerate launch`` runs.

One process (CPU or one GPU)::

    python -m caopd.training.launch --job JOB.json

Data parallel (every process runs the same loop on its share of each batch)::

    accelerate launch --config_file config/accelerate/ddp.yaml -m caopd.training.launch --job JOB.json
    accelerate launch --config_file config/accelerate/cpu_ddp.yaml --main_process_port 29517 \\
        -m caopd.training.launch --job JOB.json          # 2 CPU processes, gloo (how it is tested)

``JOB.json`` holds the keyword arguments of :func:`caopd.training.distill.run_distill` (paths as
strings, ``null`` for none) plus an optional ``"summary"`` path where the main process writes the
returned summary as JSON; :func:`write_job` writes one. A tracker cannot cross a process
boundary: the caller logs ``curves.parquet`` from the output directory instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PATH_KEYS = ("examples_path", "student_dir", "teacher_dir", "state_dir", "out", "work_dir")
JOB_KEYS = frozenset((*PATH_KEYS, "params", "seed", "threads", "summary"))


def write_job(path: str | Path, **job: Any) -> Path:
    """Write ``run_distill``'s keyword arguments (and ``summary``) to ``path`` as JSON."""
    unknown = sorted(set(job) - JOB_KEYS)
    if unknown:
        raise ValueError(f"job keys {unknown} are not arguments of run_distill")
    encoded = {k: (str(v) if isinstance(v, Path) else v) for k, v in job.items()}
    path = Path(path)
    path.write_text(json.dumps(encoded, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_job(path: str | Path) -> dict[str, Any]:
    """The job's keyword arguments with path strings turned into ``Path`` objects."""
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(job, Mapping):
        raise ValueError(f"{path}: a job file holds a JSON object")
    unknown = sorted(set(job) - JOB_KEYS)
    missing = sorted({"params", "examples_path", "student_dir", "out", "seed"} - set(job))
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    return {
        k: (Path(v) if k in (*PATH_KEYS, "summary") and v is not None else v)
        for k, v in job.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path, help="JSON file of run_distill arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from caopd.training.distill import run_distill

    job = read_job(args.job)
    summary_path = job.pop("summary", None)
    job.setdefault("teacher_dir", None)
    job.setdefault("state_dir", None)
    job.setdefault("work_dir", None)
    summary = run_distill(job.pop("params"), **job)
    from accelerate import PartialState

    if summary_path is not None and PartialState().is_main_process:
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
