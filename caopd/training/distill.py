"""Stage distill(r): train the student on round r's examples against the EMA teacher (DESIGN §1.4).

Per optimizer step (``grad_accum`` micro-batches of ``batch_size`` examples, over all processes):

1. the micro-batches come from the round's step plan (:mod:`caopd.training.data`; with
   ``batching: prompt_groups`` whole prompt groups, :func:`~caopd.training.steps.round_group_plan`);
   the number of loss tokens in the whole step, all micro-batches and all processes, is counted
   and all-reduced BEFORE the first micro-batch, and each micro-batch back-propagates its summed
   divergence divided by that count (:func:`~caopd.training.loss.normalise_by_tokens`);
2. the teacher (no grad, eval mode) runs on ``teacher_input_ids``, the student on
   ``student_input_ids`` (with ``batching: prompt_groups`` each distinct prompt once and its
   completions on the shared KV cache, :mod:`caopd.training.prefix`; a frozen teacher's states
   are computed once per round, :mod:`caopd.training.teacher_states`); the final hidden states
   at the positions predicting the completion tokens are gathered and handed with the LM-head
   weights to :func:`~caopd.training.loss.chunked_divergence_loss` with the family's final logit
   transform (:mod:`caopd.training.logit_transform`; an unknown family is refused before
   training), so B×T×V logits never exist; the first ``skip_first_tokens`` completion tokens have weight 0;
3. gradients are clipped to ``max_grad_norm``, AdamW steps on fp32 master weights, the LR
   follows a cosine schedule with linear warmup over the optimizer steps of ALL rounds, and the
   teacher's fp32 shadow moves ``ema_weight`` of the way to the student (``teacher: frozen``
   never moves it).

Precision: fp32 weights everywhere; on CUDA the forwards run under bf16 autocast (accelerate's
``mixed_precision="bf16"`` for the student, ``accelerator.autocast()`` for the teacher); the
divergence is always computed in fp32. On CPU everything is fp32 and two runs with the same seed
write byte-identical ``student/model.safetensors``.

Data parallelism: the same code runs under ``accelerate launch`` (see
:mod:`caopd.training.launch`); each process takes its share of every global micro-batch, DDP
averages gradients, only the main process writes. The training loop shards the plan itself
rather than through a prepared ``DataLoader``: the loss normaliser needs the whole step's
micro-batches before the first backward, a resumed run needs only the step counter to find its
place, and accelerate's ``even_batches`` would repeat examples to even out the last batch.

Checkpoints every ``checkpoint_every`` optimizer steps go to ``work_dir`` and a rerun resumes
from the newest (:mod:`caopd.training.state`); on CPU the resumed run ends byte-identical to an
uninterrupted one. Supported and tested: one process and CPU DDP (gloo). GPU DDP runs the same
code. Sharding (``distill.sharding: fsdp2``, torch FSDP2 under a MULTI_GPU launch), LoRA
(``model.lora``) and gradient checkpointing go through the hooks marked "issue 15", which call
:class:`caopd.training.layout.Layout`; accelerate's own FSDP and DeepSpeed setups are refused.

Where it lives: the round's objects are built by :func:`caopd.training.setup.setup_round`
(AdamW and the schedule: :mod:`caopd.training.optimizer`), the steps run in
:mod:`caopd.training.loop`, checkpoints and models are written by :mod:`caopd.training.resume`;
this module plans the round of fixed examples (:func:`run_distill`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from caopd.training.config import DistillConfig, check_round
from caopd.training.data import load_examples, round_step_plan, steps_in_round, total_optimizer_steps
from caopd.training.loop import train_round
from caopd.training.resume import run_identity
from caopd.training.setup import setup_round
from caopd.training.steps import FixedExamples, prompt_groups, round_group_plan

log = logging.getLogger(__name__)


def run_distill(
    params: Mapping[str, Any],
    *,
    examples_path: Path,
    student_dir: Path,
    teacher_dir: Path | None,
    state_dir: Path | None,
    out: Path,
    work_dir: Path | None,
    seed: int,
    threads: int = 1,
    tracker: Any = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one round of ``distill.schedule: rounds``; write ``student/``, ``teacher/``,
    ``state/`` and ``curves.parquet``.

    Args:
        params: ``{"distill": {...}, "round": r, "schedule": {"rounds", "examples_per_round"}}``.
        examples_path: the rewrite stage's ``examples.parquet`` for this round.
        student_dir: round 1: the base model; later: the previous distill artifact's ``student/``.
        teacher_dir, state_dir: None in round 1 (the teacher starts as a copy of the student);
            later the previous artifact's ``teacher/`` and ``state/``.
        out: output directory (written by the main process only).
        work_dir: resume checkpoints, every ``checkpoint_every`` steps; a checkpoint found there
            is resumed; removed on success. None: no checkpoints.
        seed: shuffling seed (the data order depends on it and the epoch only).
        threads: torch CPU threads per process.
        tracker: anything with ``log_curves(rows)``; called once with all the round's rows.
        on_step: called on every process after each optimizer step (and its checkpoint) with
            the step's curve row; a test hook (raise in it to simulate a killed job).

    Returns:
        Summary: round, schedule, steps, global_step, total_steps, final_loss,
        mean_divergence, n_examples, world_size, resumed_from (global step or None), seconds.

    Raises:
        ValueError: a bad config, round or schedule, no examples, or a checkpoint in
            ``work_dir`` of another run.
    """
    started = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    out, examples_path = Path(out), Path(examples_path)
    cfg = DistillConfig.from_params(params["distill"])
    if cfg.schedule != "rounds":
        raise ValueError(
            f"distill.schedule is {cfg.schedule!r}: run_distill trains on a rewrite stage's "
            "examples (schedule 'rounds'); online rounds run caopd.training.online.run_online_distill"
        )
    r, schedule = check_round(params)
    examples = load_examples(examples_path, need_sampled_len=cfg.estimator != "full_vocab")
    if not examples:
        raise ValueError(f"{examples_path}: no training examples")
    if schedule["examples_per_round"][r - 1] != len(examples):
        log.warning(
            "round %d: %d examples, the schedule planned %d (the LR schedule keeps the plan)",
            r, len(examples), schedule["examples_per_round"][r - 1],
        )
    if cfg.batching == "prompt_groups":
        groups = prompt_groups([ex.prompt_id for ex in examples])
        plan = round_group_plan(groups, cfg.batch_size, cfg.grad_accum, cfg.epochs, seed)
        if len(plan) != steps_in_round(len(examples), cfg.batch_size, cfg.grad_accum, cfg.epochs):
            log.warning(
                "round %d: %d prompt groups packed into micro-batches of <= %d examples make %d "
                "steps, the example plan %d (batch_size not a multiple of the group size?); the "
                "LR schedule keeps the example plan", r, len(groups), cfg.batch_size, len(plan),
                steps_in_round(len(examples), cfg.batch_size, cfg.grad_accum, cfg.epochs),
            )
    else:
        plan = round_step_plan(len(examples), cfg.batch_size, cfg.grad_accum, cfg.epochs, seed)
    source = FixedExamples(examples, plan)
    run = setup_round(
        params,
        make_source=lambda accelerator, student: source,
        total_steps=total_optimizer_steps(schedule, cfg.batch_size, cfg.grad_accum, cfg.epochs),
        identity=run_identity(params, seed, {"examples": examples_path}),
        student_dir=Path(student_dir),
        teacher_dir=None if teacher_dir is None else Path(teacher_dir),
        state_dir=None if state_dir is None else Path(state_dir),
        work_dir=None if work_dir is None else Path(work_dir),
        seed=seed,
    )
    return train_round(
        run, out=out, student_dir=Path(student_dir),
        work_dir=None if work_dir is None else Path(work_dir), tracker=tracker, on_step=on_step,
        started=started,
    )
