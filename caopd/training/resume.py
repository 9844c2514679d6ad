"""What a resume checkpoint belongs to and how a killed distill job finds and restores it
(:func:`run_identity`, :func:`checkpoint_to_resume`, :func:`restore_state`), and what a round
writes of its models and state (:func:`write_models`, :func:`write_run_checkpoint`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caopd.artifacts import STATE_DIR
from caopd.training.state import (
    STUDENT,
    TEACHER,
    TrainerState,
    latest_checkpoint,
    load_training_state,
    read_curves_json,
    read_trainer_state,
    save_training_state,
    write_curves_json,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from caopd.training.setup import DistillRun

log = logging.getLogger(__name__)


def run_identity(params: Mapping[str, Any], seed: int, inputs: Mapping[str, Path]) -> dict[str, Any]:
    """What a resume checkpoint must belong to: the params, the seed and the sha256 of the
    files the round trains from (``inputs``: name -> file)."""
    from caopd.hashing import sha256_file

    return {
        "params": json.loads(json.dumps(params, sort_keys=True)),
        "seed": seed,
        **{f"{name}_sha256": sha256_file(path) for name, path in sorted(inputs.items())},
    }


def checkpoint_to_resume(work_dir: Path | None, identity: Mapping[str, Any]) -> Path | None:
    """The newest checkpoint in ``work_dir``, checked to belong to this run."""
    checkpoint = latest_checkpoint(work_dir)
    if checkpoint is not None and read_trainer_state(checkpoint / STATE_DIR).run != identity:
        raise ValueError(
            f"{checkpoint} is a checkpoint of another run (params, seed or inputs differ); "
            f"delete {work_dir} to start afresh"
        )
    return checkpoint


def restore_state(
    progress: TrainerState, checkpoint: Path | None, state_dir: Path | None, optimizer, scheduler
) -> tuple[TrainerState, list[dict[str, Any]]]:
    """Load optimizer/scheduler/RNG from a checkpoint or the previous round; (progress, rows)."""
    if checkpoint is not None:
        saved = load_training_state(checkpoint / STATE_DIR, optimizer, scheduler)
        log.info("resuming from %s (global step %d)", checkpoint, saved.global_step)
        progress = replace(progress, global_step=saved.global_step, step_in_round=saved.step_in_round)
        return progress, read_curves_json(checkpoint / STATE_DIR)
    if state_dir is not None:
        previous = load_training_state(state_dir, optimizer, scheduler)
        r = progress.round
        if previous.rounds_done != r - 1 or previous.step_in_round != previous.steps_in_round:
            raise ValueError(
                f"{state_dir}: holds the state after {previous.rounds_done} round(s); round {r} "
                f"needs the state after round {r - 1}"
            )
        progress = replace(progress, global_step=previous.global_step)
    return progress, []


#: Builds a round's step source once the accelerator and the (unwrapped) student exist.


def write_models(run: DistillRun, directory: Path) -> None:
    """``student/`` and ``teacher/`` (the teacher module mirrors the fp32 shadow exactly)."""
    if run.layout is not None and run.layout.lora is not None:  # issue 15: adapters only
        run.layout.write_lora_checkpoint(directory)
        return
    run.student.save_pretrained(directory / STUDENT)
    run.teacher.save_pretrained(directory / TEACHER)


def write_run_checkpoint(run: DistillRun, directory: Path) -> None:
    """A resume checkpoint of ``run`` in ``directory``: its models, optimizer, schedule, progress,
    curve rows and step source."""
    write_models(run, directory)
    save_training_state(directory / STATE_DIR, run.raw_optimizer, run.raw_scheduler, run.progress)
    write_curves_json(directory / STATE_DIR, run.rows)
    run.source.save(directory)
