"""The distill stage inside its job: one process, or ``accelerate launch`` of several (DESIGN §10).

``distill.processes`` (a job resource, not a param: :mod:`caopd.resources`) decides:

- 1: :func:`caopd.training.distill.run_distill` (``distill.schedule: rounds``) or
  :func:`caopd.training.online.run_online_distill` (``online``) in the job's own process;
- N > 1: the same function in N processes through ``accelerate launch`` with the configured
  accelerate file (:func:`caopd.training.launch.launch_distill`); the main process writes the
  artifact, the job reads the summary back.

Either way the training curves are logged to the job's MLflow run from the artifact's
``curves.parquet`` once training has ended, and a killed job resumes from the checkpoints in
``results/.work/distill/<key>/`` when it is rerun.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from caopd.artifacts import CURVES_FILE, EXAMPLES_FILE, STATE_DIR
from caopd.training.curves import read_curves

#: Where a distill job keeps its resume checkpoints, relative to the working directory.
WORK_ROOT = Path("results/.work/distill")


def distill_arguments(job: Any) -> dict[str, Any]:
    """The keyword arguments of the job's distill function, but ``params``, ``threads`` and
    the tracker: the previous round's model (and teacher and optimizer state after round 1),
    the round's examples (``rounds``) or the data artifact (``online``), output and work dirs."""
    from caopd.models.base import model_dir

    previous = job.inputs["student"]
    carried = job.params["round"] > 1  # round r > 1 starts from the distill artifact of round r-1
    arguments: dict[str, Any] = dict(
        student_dir=model_dir(previous),
        teacher_dir=previous / "teacher" if carried else None,
        state_dir=previous / STATE_DIR if carried else None,
        out=job.out,
        work_dir=WORK_ROOT / job.key,
        seed=job.seed,
    )
    if job.params["distill"]["schedule"] == "online":
        arguments["data_dir"] = job.inputs["data"]
    else:
        arguments["examples_path"] = job.inputs["examples"] / EXAMPLES_FILE
    return arguments


def run_distill_stage(
    job: Any, *, processes: int, accelerate_config: Path, root: Path, sharding: str = "none",
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Train the job's round in ``processes`` processes; log its curves; return the summary.

    Args:
        job: the :class:`caopd.job.StageJob` of a distill key.
        processes: ``distill.processes`` of the job (its resource).
        accelerate_config: the accelerate config file (used when ``processes`` > 1).
        root: the checkout (the launched processes import its ``caopd``).
        sharding, gradient_checkpointing: ``distill.sharding`` / ``gradient_checkpointing`` of the
            job (resources, added to the params the processes run: :mod:`caopd.training.layout`).
    """
    from caopd.resources import process_threads
    from caopd.training.launch import launch_distill, run_job

    from caopd.training.layout import with_runtime

    arguments = distill_arguments(job)
    params = with_runtime(job.params, sharding=sharding, gradient_checkpointing=gradient_checkpointing)
    if processes == 1:
        summary = run_job({"params": params, "threads": job.threads, **arguments})
    else:
        summary = launch_distill(
            params, arguments, processes=processes, accelerate_config=accelerate_config,
            threads_per_process=process_threads(job.threads, processes), root=root, log=sys.stderr,
        )
    job.log_curves(read_curves(Path(job.out) / CURVES_FILE))
    return summary


def run(job: Any) -> dict[str, Any]:
    """Stage ``distill`` (the stage contract, :func:`caopd.job.run_stage`). The process layout
    comes from the rule's resources (``processes``, ``accelerate_config``, ``sharding``,
    ``gradient_checkpointing``): where and how the job runs, not what it computes, so not in the
    key (issue 15)."""
    from caopd.resources import accelerate_path

    res = job.resources
    return run_distill_stage(
        job,
        processes=res["processes"],
        accelerate_config=accelerate_path(res["accelerate_config"], job.root),
        sharding=res["sharding"],
        gradient_checkpointing=bool(res["gradient_checkpointing"]),
        root=job.root,
    )
