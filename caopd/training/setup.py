"""The live objects of one distill round and how they are built (:func:`setup_round`): the
accelerator, student and teacher (from a resume checkpoint when one of this run exists), AdamW and
its LR schedule (:mod:`caopd.training.optimizer`), the objective, the step source placed at the
step to run next, and a frozen teacher's precomputed states (:mod:`caopd.training.distill`'s
docstring says what a round does)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from caopd.training.config import DistillConfig
from caopd.training.data import collate
from caopd.training.ema import EmaTeacher
from caopd.training.layout import Layout
from caopd.training.objective import StudentObjective
from caopd.training.optimizer import build_optimizer, build_scheduler
from caopd.training.prefix import collate_groups
from caopd.training.resume import checkpoint_to_resume
from caopd.training.state import STUDENT, TEACHER, TrainerState, load_causal_lm
from caopd.training.steps import FixedExamples, StepSource, local_rows
from caopd.training.teacher_states import TeacherStates


@dataclass
class DistillRun:
    """The live objects of one distill round (built by :func:`setup_round`)."""

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


def setup_round(
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
) -> DistillRun:
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
    objective = StudentObjective(student, cfg.divergence_spec, cfg.chunk_size,
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
        indices = [k for step in range(source.n_steps) for keys in step_keys(source, step, accelerator)
                   for k in keys]
        teacher_states.precompute(
            source.examples, indices, teacher, accelerator,
            collate_groups if cfg.batching == "prompt_groups" else collate, cfg.batch_size,
        )
    return DistillRun(
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


def step_keys(source: StepSource, step: int, accelerator: Any) -> list[tuple[int, ...]]:
    """The example index of every local row of each micro-batch of ``step`` (FixedExamples)."""
    micros = [m for m in source.plan[step] if len(m)]
    rows = local_rows(micros, accelerator.process_index, accelerator.num_processes)
    return [tuple(int(i) for i in micro[r]) for micro, (r, _) in zip(micros, rows)]
