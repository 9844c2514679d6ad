"""The step source of an online round (:class:`OnlineSource`): it samples each refresh window
from the current student, verifies and rewrites it, writes the window's files, checkpoints and
restores them, and publishes them in the artifact (:mod:`caopd.training.online`'s docstring)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caopd.artifacts import EXAMPLES_FILE, ONLINE_DIR, ROLLOUTS_FILE
from caopd.store import read_json, write_json
from caopd.training.data import DistillExample, example_from_row
from caopd.training.online_plan import online_step_plan, prompts_per_step, refresh_windows, window_seed

log = logging.getLogger("caopd.training.online")

WINDOW_PREFIX = "refresh-"
WINDOW_SUMMARY = "summary.json"
#: The checkpoint file listing the windows written so far and the sha256 of their files.
WINDOWS_STATE = "online_windows.json"


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
