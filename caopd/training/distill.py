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
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from caopd.artifacts import CURVES_FILE, STATE_DIR
from caopd.training.curves import write_curves
from caopd.training.data import (
    Batch,
    collate,
    load_examples,
    round_step_plan,
    steps_in_round,
    total_optimizer_steps,
)
from caopd.training.ema import EmaTeacher
from caopd.training.layout import FullOptimizerState, Layout
from caopd.training.loss import normalise_by_tokens
from caopd.training.schedule import build_optimizer, build_scheduler
from caopd.training.state import (
    STUDENT,
    TEACHER,
    TrainerState,
    copy_tokenizer,
    load_causal_lm,
    save_training_state,
    write_checkpoint,
    write_curves_json,
)
from caopd.training.prefix import (
    GroupedBatch,
    collate_groups,
    gather_positions,  # noqa: F401  (re-exported)
    model_inputs,
)
from caopd.training.steps import (
    FixedExamples,
    StepSource,
    local_batches,
    local_rows,
    prompt_groups,
    round_group_plan,
)
from caopd.training.teacher_states import TeacherStates, teacher_hidden_states  # noqa: F401

from caopd.training.config import DistillConfig, check_round
from caopd.training.objective import StudentObjective
from caopd.training.resume import checkpoint_to_resume, run_identity

log = logging.getLogger(__name__)

@dataclass
class _Run:
    """The live objects of one distill round (built by :func:`_setup`)."""

    accelerator: Any
    cfg: DistillConfig
    source: StepSource
    objective: nn.Module
    teacher: nn.Module
    ema: EmaTeacher | None
    teacher_states: TeacherStates
    optimizer: Any
    scheduler: Any
    raw_optimizer: torch.optim.Optimizer
    raw_scheduler: Any
    progress: TrainerState
    rows: list[dict[str, Any]]
    resumed_from: int | None
    layout: Any = None  # issue 15: caopd.training.layout.Layout (sharding, LoRA, checkpointing)

    @property
    def student(self) -> nn.Module:
        """The student model itself (unwrapped from DDP and the objective)."""
        return self.accelerator.unwrap_model(self.objective).model


def make_accelerator():
    """The run's ``Accelerator``: CPU fp32 without CUDA, bf16 autocast with it.

    The scheduler is stepped once per optimizer step by the loop (not ``num_processes`` times,
    accelerate's default for per-process batches). Refuses the combinations the loop does not
    handle (module docstring).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision="bf16" if cuda and torch.cuda.is_bf16_supported() else "no",
        step_scheduler_with_optimizer=False,
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise NotImplementedError(
            f"distill runs no accelerate {accelerator.distributed_type.value} setup: it shards with "
            "torch FSDP2 itself (distill.sharding: fsdp2) under a MULTI_GPU launch, "
            "config/accelerate/fsdp.yaml on GPUs or cpu_ddp.yaml on CPU"
        )
    return accelerator


SourceFactory = Callable[[Any, nn.Module], StepSource]


def _setup(
    params: Mapping[str, Any],
    *,
    make_source: SourceFactory,
    total_steps: int,
    identity: Mapping[str, Any],
    student_dir: Path,
    teacher_dir: Path | None,
    state_dir: Path | None,
    work_dir: Path | None,
    seed: int,
) -> _Run:
    """Load student, teacher, optimizer and schedule (from a checkpoint in ``work_dir`` when one
    of this run exists), build the step source and place it at the step to run next."""
    from accelerate.utils import set_seed

    cfg = DistillConfig.from_params(params["distill"])
    r = params["round"]
    if (r == 1) != (teacher_dir is None and state_dir is None):
        raise ValueError(
            f"round {r}: teacher_dir and state_dir must be None in round 1 and both given after"
        )
    accelerator = make_accelerator()
    set_seed(seed)
    layout = Layout(params, accelerator)  # issue 15: sharding, LoRA, gradient checkpointing
    checkpoint = checkpoint_to_resume(work_dir, identity)
    if checkpoint is not None and not layout.owns_checkpoints:
        student_dir, teacher_dir = checkpoint / STUDENT, checkpoint / TEACHER

    if layout.active:  # issue 15
        student, teacher = layout.load_models(student_dir, teacher_dir, checkpoint)
    else:
        student = load_causal_lm(student_dir).train()
        teacher = load_causal_lm(teacher_dir if teacher_dir is not None else student_dir)
        teacher.eval().requires_grad_(False)
    optimizer = build_optimizer(student, cfg)
    scheduler = build_scheduler(optimizer, total_steps, cfg.warmup_ratio)
    if layout.lora is None:  # issue 15: a LoRA teacher is the student's own modules
        teacher.to(accelerator.device)
    objective = StudentObjective(student, cfg.divergence, cfg.divergence_param, cfg.chunk_size,
                                 estimator=cfg.estimator, top_k=cfg.vopd_top_k)  # issue 18: vOPD
    prepared = layout.prepare(objective, optimizer, scheduler)  # issue 15: accelerator.prepare
    source = make_source(accelerator, accelerator.unwrap_model(prepared[0]).model)
    start = TrainerState(
        global_step=0,
        rounds_done=r - 1,
        round=r,
        step_in_round=0,
        steps_in_round=source.n_steps,
        total_steps=total_steps,
        world_size=accelerator.num_processes,
        run=dict(identity),
    )
    progress, rows = layout.restore(start, checkpoint, state_dir, optimizer, scheduler)  # issue 15
    source.restore(checkpoint, progress.step_in_round)
    teacher_states = TeacherStates()
    # issue 15: sharded, every process must run as many teacher forwards: no per-process cache
    if (cfg.teacher == "frozen" and cfg.epochs > 1 and isinstance(source, FixedExamples)
            and not layout.sharded):
        indices = [k for step in range(source.n_steps) for keys in _step_keys(source, step, accelerator)
                   for k in keys]
        teacher_states.precompute(
            source.examples, indices, teacher, accelerator,
            collate_groups if cfg.batching == "prompt_groups" else collate, cfg.batch_size,
        )
    return _Run(
        accelerator=accelerator,
        cfg=cfg,
        source=source,
        objective=prepared[0],
        teacher=teacher,
        ema=(layout.make_ema(teacher) if layout.active else EmaTeacher(teacher))  # issue 15
        if cfg.teacher == "ema" else None,
        teacher_states=teacher_states,
        optimizer=prepared[1],
        scheduler=prepared[2],
        raw_optimizer=optimizer,
        raw_scheduler=scheduler,
        progress=progress,
        rows=rows,
        resumed_from=progress.global_step if checkpoint is not None else None,
        layout=layout,
    )


def _step_keys(source: StepSource, step: int, accelerator: Any) -> list[tuple[int, ...]]:
    """The example index of every local row of each micro-batch of ``step`` (FixedExamples)."""
    micros = [m for m in source.plan[step] if len(m)]
    rows = local_rows(micros, accelerator.process_index, accelerator.num_processes)
    return [tuple(int(i) for i in micro[r]) for micro, (r, _) in zip(micros, rows)]


def _step_batches(run: _Run, step_in_round: int) -> tuple[list[Batch | GroupedBatch], list[Any]]:
    """This process's micro-batches of optimizer step ``step_in_round`` and, for a round of fixed
    examples, the example index of each of their rows (None per batch otherwise)."""
    acc = run.accelerator
    batches = local_batches(
        run.source.micro_batches(step_in_round), acc.process_index, acc.num_processes,
        run.cfg.skip_first_tokens, grouped=run.cfg.batching == "prompt_groups",
    )
    if isinstance(run.source, FixedExamples):
        return batches, _step_keys(run.source, step_in_round, acc)
    return batches, [None] * len(batches)


def train_step(run: _Run, step_in_round: int) -> dict[str, Any]:
    """One optimizer step; returns its curve row (statistics reduced over processes)."""
    acc, cfg = run.accelerator, run.cfg
    batches, batch_keys = _step_batches(run, step_in_round)
    local_tokens = torch.tensor(float(sum(b.n_loss_tokens for b in batches)), device=acc.device)
    n_tokens = acc.reduce(local_tokens, reduction="sum")
    teacher_head = run.teacher.get_output_embeddings()
    head_weight, head_bias = teacher_head.weight, teacher_head.bias
    if run.layout is not None and run.layout.sharded:  # issue 15: gather the sharded head
        from caopd.training.sharding import head_weights

        head_weight, head_bias = head_weights(run.teacher)
    # Σ divergence, Σ weight, Σ entropy, positions, Σ p_acc, examples, examples with confidence
    sums = torch.zeros(7, dtype=torch.float64, device=acc.device)
    for i, batch in enumerate(batches):
        batch = batch.to(acc.device)
        sync = i == len(batches) - 1
        with contextlib.nullcontext() if sync else acc.no_sync(run.objective):
            student_inputs, teacher_inputs = model_inputs(batch)
            t_hidden = run.teacher_states.get(batch_keys[i], teacher_inputs, run.teacher, acc)
            sum_loss, stats = run.objective(student_inputs, t_hidden, head_weight, head_bias,
                                            batch.weights, batch.tokens, batch.sampled)
            acc.backward(normalise_by_tokens(sum_loss, n_tokens, acc.num_processes))
        real = batch.real
        sums += torch.stack(
            [
                stats.divergence_sum.double(),
                stats.weight_sum.double(),
                stats.entropy_sum.double(),
                stats.n_positions.double(),
                batch.p_acc[real].sum(),
                real.sum().double(),
                batch.has_confidence[real].sum().double(),
            ]
        )
    grad_norm = acc.clip_grad_norm_(run.objective.parameters(), cfg.max_grad_norm)
    if run.layout is not None and run.layout.sharded:  # issue 15: a replicated DTensor
        from caopd.training.sharding import local_value

        grad_norm = local_value(grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(acc.unwrap_model(run.objective).model, cfg.ema_weight)
        run.ema.copy_to(run.teacher)
    div, weight, entropy, positions, p_acc, n_ex, n_conf = acc.reduce(sums, "sum").tolist()
    return {
        "step": run.progress.global_step + 1,
        "round": run.progress.round,
        "lr": float(lr),
        "loss": div / max(n_tokens.item(), 1.0),
        "divergence": div / weight if weight else 0.0,
        "entropy": entropy / positions if positions else 0.0,
        "mean_p_acc": p_acc / n_ex if n_ex else 0.0,
        "format_adherence": n_conf / n_ex if n_ex else 0.0,
        "grad_norm": float(grad_norm),
        **run.source.curve_fields(step_in_round),  # issue 18: the length curriculum online
    }


def _write_models(run: _Run, directory: Path) -> None:
    """``student/`` and ``teacher/`` (the teacher module mirrors the fp32 shadow exactly)."""
    if run.layout is not None and run.layout.lora is not None:  # issue 15: adapters only
        run.layout.write_lora_checkpoint(directory)
        return
    run.student.save_pretrained(directory / STUDENT)
    run.teacher.save_pretrained(directory / TEACHER)


def _write_checkpoint(run: _Run, directory: Path) -> None:
    _write_models(run, directory)
    save_training_state(directory / STATE_DIR, run.raw_optimizer, run.raw_scheduler, run.progress)
    write_curves_json(directory / STATE_DIR, run.rows)
    run.source.save(directory)


def train_round(
    run: _Run,
    *,
    out: Path,
    student_dir: Path,
    work_dir: Path | None,
    tracker: Any = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    started: float,
) -> dict[str, Any]:
    """The optimizer steps of a set-up round, its checkpoints and its outputs (:func:`run_distill`)."""
    acc, cfg = run.accelerator, run.cfg
    n_steps = run.progress.steps_in_round
    if acc.is_main_process:
        log.info(
            "distill round %d (%s): %d examples, %d steps (global %d..%d of %d), %d process(es), %s",
            run.progress.round, cfg.schedule, run.source.n_examples, n_steps,
            run.progress.global_step,
            run.progress.global_step + n_steps - run.progress.step_in_round,
            run.progress.total_steps, acc.num_processes, json.dumps(cfg.__dict__, sort_keys=True),
        )
    for step_in_round in range(run.progress.step_in_round, n_steps):
        row = train_step(run, step_in_round)
        run.rows.append(row)
        run.progress = replace(
            run.progress, global_step=row["step"], step_in_round=step_in_round + 1
        )
        if acc.is_main_process and (step_in_round + 1) % 10 == 0:
            log.info("step %d: %s", row["step"], row)
        done = step_in_round + 1
        if work_dir is not None and done % cfg.checkpoint_every == 0 and done < n_steps:
            if run.layout is not None and run.layout.sharded:  # issue 15: every process writes
                run.layout.write_checkpoint(run, work_dir, row["step"],
                                            lambda d: run.layout.checkpoint_rest(run, d))
            elif acc.is_main_process:
                write_checkpoint(work_dir, row["step"], lambda d: _write_checkpoint(run, d))
            acc.wait_for_everyone()
        if on_step is not None:
            on_step(row)

    run.progress = replace(run.progress, rounds_done=run.progress.round)
    extra: dict[str, Any] = {}
    gathered = run.layout.gather(run) if run.layout is not None else None  # issue 15: collective
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if run.layout is not None and run.layout.owns_checkpoints:  # issue 15
            run.layout.write_outputs(out, gathered)
        else:
            _write_models(run, out)
        for sub in (STUDENT, TEACHER):
            copy_tokenizer(student_dir, out / sub)
        optimizer = run.raw_optimizer if gathered is None else FullOptimizerState(gathered["optimizer"])
        save_training_state(out / STATE_DIR, optimizer, run.raw_scheduler, run.progress)
        write_curves(out / CURVES_FILE, run.rows)
        extra = run.source.publish(out)
        if tracker is not None:
            tracker.log_curves(run.rows)
    acc.wait_for_everyone()
    if acc.is_main_process and work_dir is not None and Path(work_dir).exists():
        shutil.rmtree(work_dir)
    losses = [row["divergence"] for row in run.rows]
    return {
        "round": run.progress.round,
        "schedule": cfg.schedule,
        "steps": n_steps,
        "global_step": run.progress.global_step,
        "total_steps": run.progress.total_steps,
        "final_loss": run.rows[-1]["loss"] if run.rows else None,
        "mean_divergence": sum(losses) / len(losses) if losses else None,
        "n_examples": run.source.n_examples,
        "world_size": acc.num_processes,
        "resumed_from": run.resumed_from,
        "seconds": time.perf_counter() - started,
        # CUDA only: this process's peak allocated bytes (benchmarks/gpu_check.py sets it beside
        # the caopd.memory estimate); absent on CPU, so CPU artifacts are unchanged
        **({"peak_gpu_memory_bytes": torch.cuda.max_memory_allocated()} if torch.cuda.is_available() else {}),
        **extra,
    }


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
    run = _setup(
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
