"""Online distillation (``distill.schedule: online``): the reference's schedule (DESIGN §11).

The released code samples fresh rollouts from the CURRENT student for every optimizer step
(4 prompts × K = 8 rollouts; ``../shared/PAPER.md``). An online round does the same inside one
distill job, with the pure functions of the round stages, so the math is shared, not copied:

1. the round's prompts (its slice of the train split) are visited ``epochs`` times, each epoch in
   an order drawn from ``(seed, epoch)``, ``prompts_per_step = batch_size · grad_accum / K``
   prompts per optimizer step (:func:`~caopd.training.online_plan.online_step_plan`; a step
   never spans two epochs);
2. every ``refresh_every`` steps (a *refresh window*, never spanning two epochs either) the
   prompts of the window's steps are sampled K times from the student as it is at that moment,
   through the rollout-engine interface (:meth:`caopd.rollouts.hf.HFEngine.from_model`);
3. :func:`caopd.targets.compute_targets` verifies them with the task's one verifier and gives
   ``P_acc`` per prompt; :func:`caopd.rewrite.build_examples` rewrites them (CaOPD) or keeps them
   (SDFT) exactly as the rewrite stage does;
4. the window's steps train on those examples: each step on its own prompts' K rollouts, as the
   reference (4 prompts × 8 rollouts per step), or, with ``window_mix: true``, on an equal share
   of the whole window's examples in a seeded random order, so that a step's gradient mixes many
   prompts instead of a few groups of K near-identical completions with one target each.

``refresh_every: 1`` is fully on-policy, as the reference; larger windows sample in bigger
batches (faster generation) at the cost of targets up to ``refresh_every − 1`` steps old.

Every window's files are kept in the artifact, readable like the round stages' outputs
(:func:`caopd.rollouts.files.read_rollouts`, :func:`caopd.targets.read_targets`,
:func:`caopd.rewrite.read_examples`)::

    online/refresh-00000/rollouts.parquet          # the window's rollouts (RolloutRecord schema)
    online/refresh-00000/rollouts_scored.parquet   # per rollout: correct, stated confidence...
    online/refresh-00000/targets.parquet           # per prompt: k, n_correct, P_acc...
    online/refresh-00000/examples.parquet          # the training examples (rewrite schema)
    online/refresh-00000/summary.json              # the window's steps, seed, targets and rewrite summaries

While the job runs they are written to the work directory (``results/.work/distill/<key>/online``)
before the window trains, each window atomically. A checkpoint records the sha256 of every window
written so far; a resumed run verifies them, drops windows sampled after the checkpoint, and
continues with the saved examples of the window in progress (the student that sampled it no
longer exists), so a resumed run ends byte-identical to an uninterrupted one on CPU.

With several processes the main process samples and writes a window and every process reads it
back, so all ranks train on the same examples. Only the ``hf`` engine runs online (vLLM would
need the student's weights pushed into its engine after every step).

Where it lives: the step plan in :mod:`caopd.training.online_plan`, the sampling and rewriting
step source in :mod:`caopd.training.online_source`, the round in :func:`run_online_distill`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from caopd.artifacts import ONLINE_DIR, split_file
from caopd.training.online_plan import online_total_steps, prompts_per_step
from caopd.training.online_source import OnlineSource


def run_online_distill(
    params: Mapping[str, Any],
    *,
    data_dir: Path,
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
    """Train one online round; write what :func:`caopd.training.distill.run_distill` writes
    plus ``online/`` (module docstring).

    Args:
        params: ``{"distill", "rollouts", "rewrite", "task", "round", "slice": [start, stop],
            "schedule": {"rounds", "prompts_per_round"}}``.
        data_dir: the prepare_data artifact (its ``train`` split).
        student_dir, teacher_dir, state_dir, out, work_dir, seed, threads, tracker, on_step: as
            for :func:`~caopd.training.distill.run_distill`. Without ``work_dir`` the windows are
            written straight into ``out/online`` and nothing can be resumed.

    Returns:
        :func:`~caopd.training.distill.run_distill`'s summary plus
        :func:`~caopd.training.online_source.online_summary`.

    Raises:
        ValueError: a bad config (including a step that is not whole prompt groups, or the
            ``vllm`` engine), an empty slice, or a checkpoint of another run in ``work_dir``.
    """
    from transformers import AutoTokenizer

    from caopd.data import read_split
    from caopd.training.config import DistillConfig
    from caopd.training.loop import train_round
    from caopd.training.setup import setup_round
    from caopd.training.resume import run_identity

    started = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    out = Path(out)
    cfg = DistillConfig.from_params(params["distill"])
    if cfg.schedule != "online":
        raise ValueError(f"distill.schedule is {cfg.schedule!r}; run_online_distill runs 'online'")
    schedule = params["schedule"]
    r = int(params["round"])
    if not 1 <= r <= schedule["rounds"] or len(schedule["prompts_per_round"]) != schedule["rounds"]:
        raise ValueError(f"round {r} of online schedule {schedule}")
    start, stop = params["slice"]
    data_dir = Path(data_dir)
    prompts = read_split(data_dir, "train")[start:stop]
    if not prompts:
        raise ValueError(f"{data_dir}/train.jsonl has no prompts in [{start}, {stop})")
    per_step = prompts_per_step(cfg.batch_size, cfg.grad_accum, params["rollouts"]["k"])
    records_dir = (Path(work_dir) if work_dir is not None else out) / ONLINE_DIR
    tokenizer = AutoTokenizer.from_pretrained(Path(student_dir))

    from caopd.training.curriculum import OnlineCurriculum  # issue 18

    curriculum = OnlineCurriculum.of_run(params, data_dir, state_dir, seed) if cfg.length_curriculum else None

    def make_source(accelerator: Any, student: torch.nn.Module) -> OnlineSource:
        return OnlineSource(prompts=prompts, student=student, tokenizer=tokenizer, params=params,
                            seed=seed, records_dir=records_dir, accelerator=accelerator,
                            curriculum=curriculum)

    run = setup_round(
        params,
        make_source=make_source,
        total_steps=online_total_steps(schedule["prompts_per_round"], per_step, cfg.epochs),
        identity=run_identity(params, seed, {"train": data_dir / split_file("train")}),
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
