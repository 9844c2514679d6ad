"""How the distill loop holds its models: FSDP2 sharding, LoRA, gradient checkpointing
(DESIGN §10, issue 15). The hooks in :mod:`caopd.training.setup` and :mod:`caopd.training.loop`
call a :class:`Layout`.

``distill.sharding`` (``none`` | ``fsdp2``: :mod:`caopd.training.sharding`) and
``distill.gradient_checkpointing`` change no arithmetic of the optimisation, only where the
numbers live and when activations are recomputed, so like ``distill.processes`` they are job
resources and not part of the artifact key (:data:`caopd.resources.LAUNCH_KEYS`); the job adds
them to the ``distill`` params it runs with (:func:`with_runtime`), so a resume checkpoint still
belongs to one layout (its run identity). ``model.lora`` (:mod:`caopd.training.lora`) changes
what is trained and is part of the distill key (the stage params' ``lora``).

The combinations a run refuses at config load (:func:`caopd.config.layout_problem`): ``fsdp2`` with one
process, with ``distill.schedule: online`` (the main process samples from the student alone) or
with LoRA (an 8B student with LoRA fits one GPU: use processes for data parallelism instead);
LoRA with more than one round; gradient checkpointing with ``batching: prompt_groups`` (which
needs the KV cache that checkpointing turns off).

This module imports no torch at module level: the config checks run when the workflow parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``distill.sharding`` values.
SHARDINGS = ("none", "fsdp2")
#: The ``distill`` keys a job adds to its params (not in the key: module docstring).
RUNTIME_KEYS = ("sharding", "gradient_checkpointing")


def with_runtime(params: Mapping[str, Any], **runtime: Any) -> dict[str, Any]:
    """``params`` with the :data:`RUNTIME_KEYS` given in ``runtime`` added to its ``distill``."""
    unknown = sorted(set(runtime) - set(RUNTIME_KEYS))
    if unknown:
        raise ValueError(f"unknown runtime distill keys {unknown}")
    out = dict(params)
    out["distill"] = {**params["distill"], **runtime}
    return out


class Layout:
    """The model layout of one distill round; the hooks of :mod:`caopd.training.setup` and
    :mod:`caopd.training.loop`.

    Attributes:
        sharded: ``distill.sharding`` is fsdp2.
        lora: the ``model.lora`` block or None.
        gradient_checkpointing: ``distill.gradient_checkpointing``.
        active: any of them (False: the loop's own code paths run unchanged).
    """

    def __init__(self, params: Mapping[str, Any], accelerator: Any) -> None:
        distill = params["distill"]
        self.sharded = distill.get("sharding", "none") == "fsdp2"
        self.lora = params.get("lora")
        self.gradient_checkpointing = bool(distill.get("gradient_checkpointing", False))
        self.accelerator = accelerator
        self.params = params
        self.objective: Any = None
        self.active = self.sharded or self.lora is not None or self.gradient_checkpointing
        self.student_dir: Path | None = None
        self.peft_model: Any = None
        self.student: Any = None
        self.teacher: Any = None

    @property
    def owns_checkpoints(self) -> bool:
        """Checkpoints hold no ``student/``/``teacher/`` models to load (sharded or adapters)."""
        return self.sharded or self.lora is not None

    # --- setup -----------------------------------------------------------------------------

    def load_models(self, student_dir: Path, teacher_dir: Path | None, checkpoint: Path | None) -> tuple[Any, Any]:
        """``(student, teacher)`` laid out, the student in train mode, the teacher frozen.

        With LoRA the student is the LoRA-injected model and the teacher a
        :class:`~caopd.training.lora.LoraTeacher` on the same modules (restored from a checkpoint's
        adapters); sharded, both are FSDP2-sharded (restored later, :meth:`restore_sharded`).
        """
        from caopd.training.state import load_causal_lm

        self.student_dir = Path(student_dir)
        student = load_causal_lm(student_dir).train()
        if self.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            from caopd.training import lora

            if teacher_dir is not None:
                raise ValueError("model.lora trains one round: it has no previous teacher to load")
            self.peft_model = lora.wrap_student(student, self.lora)
            student = self.peft_model.get_base_model()
            teacher = lora.LoraTeacher.of_student(student)
            if checkpoint is not None:
                lora.restore_checkpoint_models(self.peft_model, teacher, checkpoint)
        else:
            teacher = load_causal_lm(teacher_dir if teacher_dir is not None else student_dir)
            teacher.eval().requires_grad_(False)
        if self.sharded:  # the student's root is its objective (made here, used by prepare)
            from caopd.training.config import DistillConfig
            from caopd.training.objective import StudentObjective
            from caopd.training.sharding import TeacherRoot, device_mesh, shard_model

            cfg = DistillConfig.from_params(self.params["distill"])
            mesh = device_mesh(self.accelerator)
            self.objective = StudentObjective(student, cfg.divergence_spec, cfg.chunk_size,
                                              estimator=cfg.estimator, top_k=cfg.vopd_top_k)
            shard_model(student, self.objective, mesh)
            teacher = shard_model(teacher, TeacherRoot(teacher), mesh)
        self.student, self.teacher = student, teacher
        return student, teacher

    def prepare(self, objective: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """``accelerator.prepare`` of the three; sharded, the FSDP root objective made by
        :meth:`load_models` (the same student and loss as ``objective``) replaces ``objective``,
        is left unwrapped (no DDP) and runs its forward under the accelerator's autocast."""
        acc = self.accelerator
        if not self.sharded:
            return acc.prepare(objective, optimizer, scheduler)
        from caopd.training.sharding import autocast_forward

        objective = self.objective
        autocast_forward(objective, acc)
        optimizer, scheduler = acc.prepare(optimizer, scheduler)
        return objective, optimizer, scheduler

    def make_ema(self, teacher: Any) -> Any:
        """The teacher's EMA: over the adapters with LoRA, over local shards when sharded."""
        from caopd.training.ema import EmaTeacher

        if self.lora is not None:
            from caopd.training.lora import LoraEma

            return LoraEma(teacher)
        if self.sharded:
            return ShardedEma(teacher)
        return EmaTeacher(teacher)

    def restore(self, start: Any, checkpoint: Path | None, state_dir: Path | None, optimizer: Any,
                scheduler: Any) -> tuple[Any, list[dict[str, Any]]]:
        """``(progress, rows)`` as :func:`caopd.training.resume.restore_state`, for this layout:
        a sharded checkpoint loads its shards; a previous round's unsharded optimizer state is
        loaded into the sharded optimizer."""
        from dataclasses import replace

        from caopd.artifacts import STATE_DIR as STATE
        from caopd.training.resume import restore_state as _restore_state
        from caopd.training.state import read_curves_json, read_trainer_state, restore_rng

        if not self.sharded:
            return _restore_state(start, checkpoint, state_dir, optimizer, scheduler)
        import torch

        from caopd.training.sharding import SHARDED, load_full_optimizer_state, load_sharded

        if checkpoint is not None:
            if not (checkpoint / SHARDED).is_dir():
                raise ValueError(f"{checkpoint} was written unsharded; rerun with distill.sharding: none "
                                 "or delete its work directory")
            load_sharded(checkpoint / SHARDED, self.student, self.teacher, optimizer)
            scheduler.load_state_dict(torch.load(checkpoint / STATE / "scheduler.pt", weights_only=True))
            rank = self.accelerator.process_index
            restore_rng(torch.load(checkpoint / STATE / f"rng-{rank}.pt", weights_only=True))
            saved = read_trainer_state(checkpoint / STATE)
            progress = replace(start, global_step=saved.global_step, step_in_round=saved.step_in_round)
            return progress, read_curves_json(checkpoint / STATE)
        student = self.student

        class _Loader:  # load_training_state's optimizer: the unsharded state into the shards
            def load_state_dict(self, state: dict) -> None:
                load_full_optimizer_state(student, optimizer, state)

        return _restore_state(start, None, state_dir, _Loader(), scheduler)

    # --- writing ---------------------------------------------------------------------------

    def write_checkpoint(self, run: Any, work_dir: Path, step: int, write_rest: Any) -> None:
        """Every process writes its shards (sharded), then the main process seals the checkpoint
        (:func:`caopd.training.state.write_checkpoint`) with ``write_rest(directory)``.

        Only for the sharded layout; the others write on the main process as the loop does.
        """
        import shutil

        import torch

        from caopd.training.sharding import SHARDED, save_sharded
        from caopd.artifacts import STATE_DIR as STATE
        from caopd.training.state import capture_rng, write_checkpoint

        acc = self.accelerator
        staging = Path(work_dir) / f".staging-{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            (staging / STATE).mkdir(parents=True)
        acc.wait_for_everyone()
        save_sharded(staging / SHARDED, self.student, self.teacher, run.raw_optimizer)
        torch.save(capture_rng(), staging / STATE / f"rng-{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            def write(directory: Path) -> None:
                for item in staging.iterdir():
                    shutil.move(str(item), directory / item.name)
                write_rest(directory)

            write_checkpoint(work_dir, step, write)
            shutil.rmtree(staging, ignore_errors=True)
        acc.wait_for_everyone()

    def checkpoint_rest(self, run: Any, directory: Path) -> None:
        """What the main process adds to a sharded checkpoint: scheduler, counters, curves,
        the step source's records."""
        import torch

        from caopd.store import write_json
        from caopd.artifacts import STATE_DIR as STATE
        from caopd.training.state import TRAINER_STATE, write_curves_json

        from dataclasses import asdict

        torch.save(run.raw_scheduler.state_dict(), directory / STATE / "scheduler.pt")
        write_json(directory / STATE / TRAINER_STATE, asdict(run.progress))
        write_curves_json(directory / STATE, run.rows)
        run.source.save(directory)

    def write_lora_checkpoint(self, directory: Path) -> None:
        from caopd.training.lora import write_checkpoint_models

        write_checkpoint_models(self.peft_model, self.teacher, directory)

    def gather(self, run: Any) -> dict[str, Any] | None:
        """Sharded: the full student, teacher and optimizer state dicts on the main process
        (a collective: every process calls it); None otherwise."""
        if not self.sharded:
            return None
        from caopd.training.sharding import fqn_to_id_optimizer_state, gather_full, gather_full_optimizer

        gathered = {
            "student": gather_full(self.student),
            "teacher": gather_full(self.teacher),
            "optimizer": gather_full_optimizer(self.student, run.raw_optimizer),
        }
        if self.accelerator.is_main_process:
            gathered["optimizer"] = fqn_to_id_optimizer_state(gathered["optimizer"])
        return gathered

    def write_outputs(self, out: Path, gathered: dict[str, Any] | None) -> None:
        """The artifact's ``student/`` and ``teacher/`` (main process): gathered shards written
        by an unsharded copy of the model, or the LoRA adapters and merged models."""
        from caopd.training.state import STUDENT, TEACHER, load_causal_lm

        if self.lora is not None:
            from caopd.training.lora import write_outputs

            write_outputs(self.peft_model, self.teacher, self.student_dir, out)
            return
        if gathered is None:
            raise ValueError("write_outputs of a sharded layout needs gather()'s state dicts")
        plain = load_causal_lm(self.student_dir)
        for name, sub in (("student", STUDENT), ("teacher", TEACHER)):
            plain.load_state_dict(gathered[name])
            plain.save_pretrained(out / sub)


class FullOptimizerState:
    """Something with ``state_dict()`` returning a given state dict (for ``save_training_state``)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def _sharded_ema_class() -> type:
    from caopd.training.ema import EmaTeacher
    from caopd.training.sharding import causal_lm, reshard

    class _ShardedEma(EmaTeacher):
        """:class:`~caopd.training.ema.EmaTeacher` of a sharded teacher (a
        :class:`~caopd.training.sharding.TeacherRoot`): over the causal LM's local shards, with the
        root resharded first (a no-grad forward leaves it gathered)."""

        def __init__(self, teacher: Any) -> None:
            reshard(teacher)
            super().__init__(causal_lm(teacher))

        def copy_to(self, module: Any) -> None:
            reshard(module)
            super().copy_to(causal_lm(module))

    return _ShardedEma


def ShardedEma(teacher: Any) -> Any:  # noqa: N802 - a class made on first use (no torch at import)
    """An EMA of a sharded teacher (:func:`_sharded_ema_class`)."""
    return _sharded_ema_class()(teacher)
