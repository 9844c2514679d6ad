"""The optimizer steps of one set-up distill round (:func:`train_step`), its checkpoints and its
outputs (:func:`train_round`); :mod:`caopd.training.distill`'s docstring says what a step does."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from caopd.artifacts import CURVES_FILE, STATE_DIR
from caopd.training.curves import write_curves
from caopd.training.data import Batch
from caopd.training.layout import FullOptimizerState
from caopd.training.loss import normalise_by_tokens
from caopd.training.prefix import GroupedBatch, model_inputs
from caopd.training.resume import write_models, write_run_checkpoint
from caopd.training.setup import DistillRun, step_keys
from caopd.training.state import STUDENT, TEACHER, copy_tokenizer, save_training_state, write_checkpoint
from caopd.training.steps import FixedExamples, local_batches

log = logging.getLogger("caopd.training.distill")


def _step_batches(run: DistillRun, step_in_round: int) -> tuple[list[Batch | GroupedBatch], list[Any]]:
    """This process's micro-batches of optimizer step ``step_in_round`` and, for a round of fixed
    examples, the example index of each of their rows (None per batch otherwise)."""
    acc = run.accelerator
    batches = local_batches(
        run.source.micro_batches(step_in_round), acc.process_index, acc.num_processes,
        run.cfg.skip_first_tokens, grouped=run.cfg.batching == "prompt_groups",
    )
    if isinstance(run.source, FixedExamples):
        return batches, step_keys(run.source, step_in_round, acc)
    return batches, [None] * len(batches)


def train_step(run: DistillRun, step_in_round: int) -> dict[str, Any]:
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


def train_round(
    run: DistillRun,
    *,
    out: Path,
    student_dir: Path,
    work_dir: Path | None,
    tracker: Any = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    started: float,
) -> dict[str, Any]:
    """The optimizer steps of a set-up round, its checkpoints and its outputs (:func:`caopd.training.distill.run_distill`)."""
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
                write_checkpoint(work_dir, row["step"], lambda d: write_run_checkpoint(run, d))
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
            write_models(run, out)
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
