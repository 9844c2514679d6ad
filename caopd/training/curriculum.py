"""Entropy-gated length curriculum (``distill.length_curriculum``; DESIGN §11, issue 18).

"Decoupling KL and Trajectories" (``../shared/PAPER.md``) grows the training length along a
ladder only while the student's held-out mean token entropy stays at or above ``H_min``, so the
student is not pushed to long completions once it has collapsed. Here the completion budget is
``rollouts.max_new_tokens`` (what the rollouts sample) and the rewrite's completion cap, cut by
the same number of tokens (:func:`budgets`); ``lengths`` is the ladder of the first.

**The rule** (:func:`next_index`): at each decision point the rung moves up by one when the
measured entropy is ≥ ``min_entropy`` and the ladder has a higher rung; otherwise it holds (a
NaN entropy, nothing measured, holds). Decision points:

- ``schedule: rounds``: each round's rollouts stage. Round 1 starts at rung 0; round r > 1 applies
  the rule to round r − 1's rung and the entropy of its input student (the student after round
  r − 1). The decision is made inside rollouts(r) from its input student and written to its
  artifact as :data:`~caopd.artifacts.CURRICULUM_FILE` (:func:`round_curriculum`); rewrite(r) reads
  it for its cap and rollouts(r + 1), which takes rollouts(r) as its ``previous`` input, for the
  rung (:mod:`caopd.plan`).
- ``schedule: online``: each refresh window of the distill job (:class:`OnlineCurriculum`). A
  round's first window starts at rung 0 in round 1, else continues the previous round's last
  rung; the record goes to the window's ``summary.json`` and the curve columns
  ``curriculum_length`` and ``curriculum_entropy`` of its steps.

The entropy (:mod:`caopd.training.entropy`) is measured at every decision point, the first
included (for the log), on the first ``n_prompts`` prompts of the val split, one completion each
sampled at the rollouts' temperature and top-p and at the length then in force, seeded from the
stage seed. The entropy and the length in force are in the record, the manifest and MLflow.

Standard library only at import (the rollouts stage imports this module).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caopd.artifacts import CURRICULUM_FILE, ONLINE_DIR


@dataclass(frozen=True)
class LengthCurriculum:
    """The ``distill.length_curriculum`` block: ladder ``lengths`` (tokens, strictly increasing),
    ``min_entropy`` (nats per token), ``n_prompts`` (val prompts the entropy is measured on)."""

    lengths: tuple[int, ...]
    min_entropy: float
    n_prompts: int

    def __post_init__(self) -> None:
        if not self.lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"distill.length_curriculum.lengths={list(self.lengths)} must be integers >= 1")
        if any(b <= a for a, b in zip(self.lengths, self.lengths[1:])):
            raise ValueError(f"distill.length_curriculum.lengths={list(self.lengths)} must be strictly increasing")
        if not (math.isfinite(self.min_entropy) and self.min_entropy >= 0):
            raise ValueError(f"distill.length_curriculum.min_entropy={self.min_entropy} must be finite and >= 0")
        if self.n_prompts < 1:
            raise ValueError(f"distill.length_curriculum.n_prompts={self.n_prompts} must be >= 1")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> LengthCurriculum:
        unknown = sorted(set(cfg) - {"lengths", "min_entropy", "n_prompts"})
        missing = [k for k in ("lengths", "min_entropy", "n_prompts") if k not in cfg]
        if unknown or missing:
            raise ValueError(f"distill.length_curriculum: missing keys {missing}, unknown keys {unknown}")
        return cls(tuple(cfg["lengths"]), float(cfg["min_entropy"]), int(cfg["n_prompts"]))


def next_index(lengths: Sequence[int], index: int, entropy: float, min_entropy: float) -> int:
    """The ladder rung in force after a decision point.

    Rule: ``index + 1`` when ``entropy >= min_entropy`` and ``index + 1 < len(lengths)``; else
    ``index`` (the rung holds: entropy below the threshold, NaN, or the top of the ladder).

    Args:
        lengths: the ladder (only its length matters); index: the rung in force, 0-based;
        entropy: the student's mean token entropy now (nats); min_entropy: the gate (nats).

    Raises:
        ValueError: ``index`` is not a rung of the ladder.
    """
    if not 0 <= index < len(lengths):
        raise ValueError(f"curriculum index {index} is not a rung of the ladder {list(lengths)}")
    if entropy >= min_entropy and index + 1 < len(lengths):  # False for NaN
        return index + 1
    return index


def budgets(length: int, max_new_tokens: int, max_completion_length: int) -> tuple[int, int]:
    """``(rollout max_new_tokens, rewrite max_completion_length)`` with ``length`` in force: both
    the configured budgets cut by ``max_new_tokens − length`` tokens, so the rewrite keeps its
    configured room for the ``Confidence:`` suffix above the rollouts' budget.

    Raises:
        ValueError: ``length`` outside [1, max_new_tokens].
    """
    if not 1 <= length <= max_new_tokens:
        raise ValueError(f"curriculum length {length} outside [1, rollouts.max_new_tokens {max_new_tokens}]")
    return length, max_completion_length - (max_new_tokens - length)


def probe_seed(seed: int, *where: Any) -> int:
    """The seed of one entropy probe, drawn from the stage seed and its place (31 bits)."""
    digest = hashlib.sha256(":".join(map(str, (seed, "curriculum", *where))).encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


def decide(curriculum: LengthCurriculum, previous: int | None, engine: Any, prompts: Sequence[Any],
           rollouts: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Measure the entropy of ``engine.model`` at the length in force and apply the rule.

    Args:
        previous: the rung of the previous decision point, None at the first (rung 0 then).
        engine: an :class:`~caopd.rollouts.hf.HFEngine` over the student.
        prompts: the held-out ``(prompt_id, messages)`` pairs.
        rollouts: the ``rollouts`` config block (temperature, top_p, max_new_tokens, batch_size).

    Returns:
        The record: ``index``, ``length`` (the rollouts' max_new_tokens in force), ``previous_index``,
        ``probe_length``, ``entropy`` (nats, None if nothing was measured), ``entropy_tokens``,
        ``entropy_prompts``, ``max_new_tokens`` (configured), ``lengths``, ``min_entropy``.
    """
    from caopd.rollouts.engine import SamplingConfig
    from caopd.training.entropy import probe_entropy

    lengths = curriculum.lengths
    probe_length = lengths[0 if previous is None else previous]
    sampling = SamplingConfig(n=1, temperature=rollouts["temperature"], top_p=rollouts["top_p"],
                              max_new_tokens=probe_length, batch_size=rollouts["batch_size"])
    entropy, n_tokens = probe_entropy(engine, prompts, sampling, seed)
    index = 0 if previous is None else next_index(lengths, previous, entropy, curriculum.min_entropy)
    return {
        "index": index, "length": lengths[index], "previous_index": previous,
        "probe_length": probe_length, "entropy": entropy if math.isfinite(entropy) else None,
        "entropy_tokens": n_tokens, "entropy_prompts": len(prompts),
        "max_new_tokens": int(rollouts["max_new_tokens"]), "lengths": list(lengths),
        "min_entropy": curriculum.min_entropy,
    }


def record_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's figures for MLflow and the curves: length in force, rung, entropy (NaN if none)."""
    entropy = record["entropy"]
    return {"curriculum_length": float(record["length"]), "curriculum_index": float(record["index"]),
            "curriculum_entropy": math.nan if entropy is None else float(entropy)}


def read_record(directory: str | Path) -> dict[str, Any]:
    """The :data:`~caopd.artifacts.CURRICULUM_FILE` of a rollouts artifact.

    Raises:
        FileNotFoundError: the artifact has none (it was sampled without the curriculum).
    """
    from caopd.store import read_json

    path = Path(directory) / CURRICULUM_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no length-curriculum record (rollouts sampled without "
                                "distill.length_curriculum)")
    return read_json(path)


def round_curriculum(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, *,
                     seed: int) -> dict[str, Any]:
    """The decision of rollouts(r) under ``schedule: rounds`` (module docstring): measure the
    input student on the val split, apply the rule to rollouts(r − 1)'s rung (input ``previous``;
    none in round 1), write the record to ``out`` and return it.

    Raises:
        ValueError: the data artifact has no val prompts.
    """
    from caopd.models.base import model_dir
    from caopd.rollouts.hf import HFEngine
    from caopd.store import write_json

    curriculum = LengthCurriculum.from_mapping(params["length_curriculum"])
    prompts = val_prompts(inputs["data"], curriculum.n_prompts)
    previous = read_record(inputs["previous"])["index"] if "previous" in inputs else None
    engine = HFEngine(str(model_dir(inputs["model"])), progress=False)
    record = decide(curriculum, previous, engine, prompts, params["rollouts"],
                    probe_seed(seed, params["round"]))
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / CURRICULUM_FILE, record)
    return record


def val_prompts(data_dir: str | Path, n: int) -> list[tuple[str, Any]]:
    """The first ``n`` prompts of the val split as ``(prompt_id, messages)``; ValueError if none."""
    from caopd.data import read_split

    examples = read_split(data_dir, "val")[:n]
    if not examples:
        raise ValueError(f"{data_dir}: the val split has no prompts; distill.length_curriculum "
                         "measures the student's entropy on it (set task.sizes.val)")
    return [(ex.id, ex.messages) for ex in examples]


class OnlineCurriculum:
    """The length curriculum of an online round: a decision at every refresh window.

    Args:
        params: the online stage params (``distill.length_curriculum``, ``rollouts``, ``round``).
        prompts: the held-out ``(prompt_id, messages)`` pairs (:func:`val_prompts`).
        carried: the last rung of the previous round (None in round 1).
        seed: the stage seed.
    """

    def __init__(self, params: Mapping[str, Any], prompts: Sequence[Any], carried: int | None,
                 seed: int) -> None:
        self.curriculum = LengthCurriculum.from_mapping(params["distill"]["length_curriculum"])
        self.rollouts, self.round = params["rollouts"], int(params["round"])
        self.prompts, self.carried, self.seed = list(prompts), carried, seed

    @classmethod
    def of_run(cls, params: Mapping[str, Any], data_dir: Path, state_dir: Path | None,
               seed: int) -> OnlineCurriculum:
        """For :func:`caopd.training.online.run_online_distill`: the val prompts of ``data_dir``
        and, after round 1, the last rung of the previous round's artifact (``state_dir``'s)."""
        n = LengthCurriculum.from_mapping(params["distill"]["length_curriculum"]).n_prompts
        carried = None if state_dir is None else last_online_index(Path(state_dir).parent / ONLINE_DIR)
        return cls(params, val_prompts(data_dir, n), carried, seed)

    def window(self, window: int, previous_summary: Path, engine: Any, sampling: Any,
               rewrite: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``(sampling, rewrite, record)`` of refresh window ``window``: the rule applied to the
        rung in ``previous_summary`` (window − 1's ``summary.json``; the carried rung for window
        0) and the entropy of ``engine.model`` now; the configs with its length in force."""
        from dataclasses import replace

        from caopd.store import read_json

        previous = read_json(previous_summary)["curriculum"]["index"] if window else self.carried
        record = {**decide(self.curriculum, previous, engine, self.prompts, self.rollouts,
                           probe_seed(self.seed, self.round, window)), "window": window}
        new_tokens, cap = budgets(record["length"], sampling.max_new_tokens, rewrite.max_completion_length)
        return replace(sampling, max_new_tokens=new_tokens), replace(rewrite, max_completion_length=cap), record

    @staticmethod
    def curve_fields(record: Mapping[str, Any]) -> dict[str, float]:
        """The curve columns of a window's steps: its length in force and entropy."""
        metrics = record_metrics(record)
        return {k: metrics[k] for k in ("curriculum_length", "curriculum_entropy")}


def last_online_index(online_dir: Path) -> int | None:
    """The rung of the last refresh window in an online artifact's ``online/`` (None if none)."""
    from caopd.store import read_json

    summaries = sorted(Path(online_dir).glob("refresh-*/summary.json"))
    record = read_json(summaries[-1]).get("curriculum") if summaries else None
    return None if record is None else int(record["index"])
