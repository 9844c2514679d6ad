"""Online distillation (``distill.schedule: online``): the reference's schedule (DESIGN §11).

The released code samples fresh rollouts from the CURRENT student for every optimizer step
(4 prompts × K = 8 rollouts; ``../shared/PAPER.md``). An online round does the same inside one
distill job, with the pure functions of the round stages, so the math is shared, not copied:

1. the round's prompts (its slice of the train split) are visited ``epochs`` times, each epoch in
   an order drawn from ``(seed, epoch)``, ``prompts_per_step = batch_size · grad_accum / K``
   prompts per optimizer step (:func:`online_step_plan`; a step never spans two epochs);
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
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caopd.artifacts import EXAMPLES_FILE, ROLLOUTS_FILE, split_file
from caopd.store import read_json, write_json
from caopd.training.data import DistillExample, example_from_row, epoch_order

log = logging.getLogger(__name__)

ONLINE_DIR = "online"
WINDOW_PREFIX = "refresh-"
WINDOW_SUMMARY = "summary.json"
#: The checkpoint file listing the windows written so far and the sha256 of their files.
WINDOWS_STATE = "online_windows.json"


def prompts_per_step(batch_size: int, grad_accum: int, k: int) -> int:
    """``batch_size · grad_accum / k``: the prompts whose K rollouts fill one optimizer step.

    Raises:
        ValueError: the step's examples are not a whole number of prompt groups.
    """
    examples = batch_size * grad_accum
    if k < 1 or examples % k:
        raise ValueError(
            f"distill.batch_size × distill.grad_accum = {examples} examples per optimizer step is "
            f"not a multiple of rollouts.k = {k}: an online step trains whole prompt groups"
        )
    return examples // k


def online_steps_in_round(n_prompts: int, per_step: int, epochs: int) -> int:
    """Optimizer steps of an online round: ``epochs · ceil(n_prompts / per_step)``."""
    return epochs * math.ceil(n_prompts / per_step)


def online_total_steps(prompts_per_round: Sequence[int], per_step: int, epochs: int) -> int:
    """The LR schedule's length over all online rounds: Σ :func:`online_steps_in_round`."""
    return sum(online_steps_in_round(n, per_step, epochs) for n in prompts_per_round)


def online_step_plan(n_prompts: int, per_step: int, epochs: int, seed: int) -> list[list[np.ndarray]]:
    """The prompt indices of every step, epoch by epoch.

    Returns:
        ``plan[e][s]``: int64 array of the prompt indices of step ``s`` of epoch ``e`` (each epoch
        a permutation from :func:`~caopd.training.data.epoch_order`, cut every ``per_step``; the
        last step of an epoch may hold fewer).
    """
    plan = []
    for epoch in range(epochs):
        order = epoch_order(n_prompts, seed, epoch)
        plan.append([order[i : i + per_step] for i in range(0, n_prompts, per_step)])
    return plan


def refresh_windows(steps_per_epoch: Sequence[int], refresh_every: int) -> list[int]:
    """The refresh window of every step of the round (``len == sum(steps_per_epoch)``).

    Windows hold ``refresh_every`` consecutive steps and restart at each epoch, so a window
    never samples a prompt twice.
    """
    windows, next_window = [], 0
    for n in steps_per_epoch:
        windows.extend(next_window + s // refresh_every for s in range(n))
        next_window += math.ceil(n / refresh_every)
    return windows


def window_seed(seed: int, round_: int, window: int) -> int:
    """The rollout seed of one refresh window, drawn from the stage seed (31 bits)."""
    digest = hashlib.sha256(f"{seed}:online:{round_}:{window}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


def window_files(directory: Path) -> dict[str, str]:
    """``{file name: sha256}`` of a window directory's files."""
    from caopd.hashing import sha256_file

    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


class OnlineSource:
    """The step source of an online round (module docstring).

    Args:
        prompts: the round's prompts (its slice of the train split), in split order.
        student: the student module being trained (sampled from in eval mode, no grad).
        tokenizer: the student's tokenizer.
        params: the stage params (``distill``, ``rollouts``, ``rewrite``, ``task``, ``round``).
        seed: the stage seed (data order and rollout seeds).
        records_dir: where the windows are written (``<work_dir>/online``).
        accelerator: the run's accelerator (main process, barriers, autocast).
        curriculum: a :class:`caopd.training.curriculum.OnlineCurriculum` deciding each window's
            completion budget (``distill.length_curriculum``), or None.
    """

    def __init__(
        self,
        *,
        prompts: Sequence[Any],
        student: torch.nn.Module,
        tokenizer: Any,
        params: Mapping[str, Any],
        seed: int,
        records_dir: Path,
        accelerator: Any,
        curriculum: Any = None,
    ) -> None:
        from caopd.rewrite import RewriteConfig
        from caopd.rollouts.engine import SamplingConfig

        distill, rollouts = params["distill"], params["rollouts"]
        if rollouts["engine"] != "hf":
            raise ValueError(
                f"distill.schedule 'online' samples from the student in training with the hf engine; "
                f"rollouts.engine is {rollouts['engine']!r}"
            )
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError("an online round needs at least one training prompt")
        self.student, self.tokenizer, self.accelerator = student, tokenizer, accelerator
        self.task = params["task"]
        self.round = int(params["round"])
        self.seed = seed
        self.rewrite = RewriteConfig.from_mapping(params["rewrite"])
        self.sampling = SamplingConfig(
            n=rollouts["k"], temperature=rollouts["temperature"], top_p=rollouts["top_p"],
            max_new_tokens=rollouts["max_new_tokens"], batch_size=rollouts["batch_size"],
        )
        self.batch_size, self.grad_accum = distill["batch_size"], distill["grad_accum"]
        per_step = prompts_per_step(self.batch_size, self.grad_accum, rollouts["k"])
        plan = online_step_plan(len(self.prompts), per_step, distill["epochs"], seed)
        self.steps = [step for epoch in plan for step in epoch]
        self.window_of = refresh_windows([len(epoch) for epoch in plan], distill["refresh_every"])
        self.window_mix = bool(distill["window_mix"])
        self._window_rows: dict[int, list[DistillExample]] = {}
        self.records_dir = Path(records_dir)
        self._engine = None
        self._loaded: int | None = None
        self._by_prompt: dict[str, list[DistillExample]] = {}
        # issue 18: the length curriculum, and the examples' sampled_len for distill.estimator
        self.curriculum, self._curve = curriculum, {}
        self.sampled_len = distill.get("estimator", "full_vocab") != "full_vocab"

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def n_examples(self) -> int:
        return sum(len(step) for step in self.steps) * self.sampling.n

    def window_dir(self, window: int) -> Path:
        return self.records_dir / f"{WINDOW_PREFIX}{window:05d}"

    def window_steps(self, window: int) -> list[int]:
        return [s for s, w in enumerate(self.window_of) if w == window]

    # --- the steps ------------------------------------------------------------------------------

    def micro_batches(self, step: int) -> list[list[DistillExample]]:
        """The K rollouts of each of the step's prompts, sampled at the start of its window,
        cut into micro-batches of ``batch_size`` examples (at most ``grad_accum`` of them)."""
        window = self.window_of[step]
        if window != self._loaded:
            self._enter(window)
        rows = self._window_rows[step] if self.window_mix else self._own_rows(step)
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def _own_rows(self, step: int) -> list[DistillExample]:
        """The K rollouts of each prompt of ``step``, in plan order."""
        return [ex for i in self.steps[step] for ex in self._by_prompt.get(self.prompts[int(i)].id, [])]

    def _mix_window(self, window: int) -> dict[int, list[DistillExample]]:
        """``window_mix``: the window's examples pooled in step order and permuted (seeded by
        stage seed, round and window); each step takes as many of them as its own prompts have,
        so step sizes (and the token normaliser) are those of the unmixed plan."""
        steps = self.window_steps(window)
        own = [self._own_rows(s) for s in steps]
        pool = [ex for rows in own for ex in rows]
        order = np.random.default_rng([self.seed, self.round, window]).permutation(len(pool))
        mixed, start = {}, 0
        for s, rows in zip(steps, own):
            mixed[s] = [pool[int(i)] for i in order[start : start + len(rows)]]
            start += len(rows)
        return mixed

    def _enter(self, window: int) -> None:
        """Sample the window (main process, unless a resumed run kept it), then read it back."""
        from caopd.rewrite import read_examples

        directory = self.window_dir(window)
        if self.accelerator.is_main_process and not directory.is_dir():
            self._sample(window, directory)
        self.accelerator.wait_for_everyone()
        by_prompt: dict[str, list[DistillExample]] = {}
        for row in read_examples(directory / EXAMPLES_FILE):
            by_prompt.setdefault(row["prompt_id"], []).append(example_from_row(row))
        self._by_prompt, self._loaded = by_prompt, window
        if self.curriculum is not None:  # issue 18: the window's length and entropy, per step
            self._curve = self.curriculum.curve_fields(read_json(directory / WINDOW_SUMMARY)["curriculum"])
        if self.window_mix:
            self._window_rows = self._mix_window(window)

    def _sample(self, window: int, directory: Path) -> None:
        from caopd.rewrite import build_examples, write_examples
        from caopd.rollouts.files import write_rollouts
        from caopd.rollouts.hf import HFEngine
        from caopd.targets import compute_targets, targets_summary, write_targets

        began = time.perf_counter()
        steps = self.window_steps(window)
        prompts = [self.prompts[int(i)] for s in steps for i in self.steps[s]]
        if self._engine is None:
            self._engine = HFEngine.from_model(self.student, self.tokenizer)
        seed = window_seed(self.seed, self.round, window)
        sampling, rewrite, extra = self.sampling, self.rewrite, {}
        if self.curriculum is not None:  # issue 18: this window's rung, from window - 1's summary
            with self.accelerator.autocast():
                sampling, rewrite, extra["curriculum"] = self.curriculum.window(
                    window, self.window_dir(window - 1) / WINDOW_SUMMARY, self._engine, sampling, rewrite)
        with self.accelerator.autocast():
            records = self._engine.generate([(ex.id, ex.messages) for ex in prompts], sampling, seed)
        per_rollout, per_prompt = compute_targets(prompts, records, self.task)
        rows, rewrite_summary = build_examples(
            prompts, records, per_prompt, per_rollout, self.tokenizer, rewrite
        )
        tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_rollouts(records, tmp / ROLLOUTS_FILE)
        write_targets(per_rollout, per_prompt, tmp)
        write_examples(rows, tmp / EXAMPLES_FILE, sampled_len=self.sampled_len)
        write_json(tmp / WINDOW_SUMMARY, {
            "window": window, "round": self.round, "steps": [steps[0], steps[-1]], "seed": seed,
            "targets": targets_summary(per_rollout, per_prompt), "rewrite": rewrite_summary, **extra,
        })
        os.replace(tmp, directory)
        log.info("online window %d (steps %d-%d): %d rollouts, mean P_acc %.3f, %.1f s",
                 window, steps[0], steps[-1], len(records), float(per_prompt["p_acc"].mean()),
                 time.perf_counter() - began)

    def curve_fields(self, step: int) -> dict[str, float]:
        """The length curriculum's length in force and entropy of the step's window ({} if off)."""
        return dict(self._curve)

    # --- resume and publication -----------------------------------------------------------------

    def save(self, checkpoint: Path) -> None:
        """Record the sha256 of every window written so far in the checkpoint."""
        windows = {}
        if self.records_dir.is_dir():
            for directory in sorted(self.records_dir.glob(f"{WINDOW_PREFIX}*")):
                windows[directory.name] = window_files(directory)
        write_json(checkpoint / WINDOWS_STATE, windows)

    def restore(self, checkpoint: Path | None, step: int) -> None:
        """Fresh start: drop any window left by a killed run. Resume: keep (and verify) the
        windows the checkpoint lists, drop those sampled after it."""
        from caopd.store import ArtifactError

        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        kept: Mapping[str, Mapping[str, str]] = {}
        if checkpoint is not None:
            kept = read_json(checkpoint / WINDOWS_STATE)
        if self.records_dir.is_dir():
            for directory in sorted(self.records_dir.iterdir()):
                if directory.name not in kept:
                    shutil.rmtree(directory) if directory.is_dir() else directory.unlink()
        for name, files in kept.items():
            directory = self.records_dir / name
            if not directory.is_dir() or window_files(directory) != dict(files):
                raise ArtifactError(
                    f"{directory}: the online window the checkpoint {checkpoint} recorded is missing "
                    "or was modified; delete the work directory to start afresh"
                )
        if checkpoint is not None and step < self.n_steps:
            start = self.window_steps(self.window_of[step])[0]
            if start < step and self.window_dir(self.window_of[step]).name not in kept:
                raise ArtifactError(
                    f"{checkpoint}: resumes inside window {self.window_of[step]} but does not list it"
                )
        self.accelerator.wait_for_everyone()

    def publish(self, out: Path) -> dict[str, Any]:
        """Move the windows into ``out/online`` and summarise them."""
        target = Path(out) / ONLINE_DIR
        if self.records_dir.resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.records_dir, target)
        summaries = [read_json(d / WINDOW_SUMMARY) for d in sorted(target.glob(f"{WINDOW_PREFIX}*"))]
        return online_summary(summaries)


def online_summary(windows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over the windows' ``summary.json`` bodies, for the manifest."""
    n_rollouts = sum(w["targets"]["n_rollouts"] for w in windows)
    correct = sum(w["targets"]["accuracy"] * w["targets"]["n_rollouts"] for w in windows)
    counts = ("n_without_label", "n_truncated_prompt", "n_truncated_teacher_prompt",
              "n_truncated_completion", "n_fallback", "n_skipped")
    curriculum = [w["curriculum"] for w in windows if "curriculum" in w]  # issue 18
    return {
        **({"curriculum_lengths": [c["length"] for c in curriculum],
            "curriculum_entropies": [c["entropy"] for c in curriculum]} if curriculum else {}),
        "online_windows": len(windows),
        "online_rollouts": n_rollouts,
        "online_accuracy": correct / n_rollouts if n_rollouts else None,
        **{f"online_{name}": sum(w["rewrite"][name] for w in windows) for name in counts},
    }


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
        :func:`~caopd.training.distill.run_distill`'s summary plus :func:`online_summary`.

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
