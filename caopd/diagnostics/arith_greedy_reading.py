"""What greedy decoding reads from a confidence learned from sampled targets, arith level by level.

CaOPD trains the stated number toward each training prompt's success rate ``P_acc`` (the share
of its K rollouts that were right). A student that cannot tell which prompts it will get right
learns, at best, the *distribution* of the targets of the prompts that look alike to it, and
that distribution is calibrated in its mean. Greedy decoding reads it digit by digit, taking
the most likely next digit each time (:func:`greedy_decode`): a mode-like value, not the mean.

This module shows what that reading gives for an *ideal level-conditional student*: one that
sees exactly the level written in an ``arith`` question and has learned, per level, the
distribution of the training targets of that level. Each evaluated answer at level ``L`` is
given the confidence ``greedy_decode(targets of level L)``; its correctness is the evaluated
model's own. It is a reference, not a bound: a real student conditions on more than the level
(its own work line, the numbers) and can read higher or lower. Where the greedy reading of a
level sits far from both the mean of its targets and its accuracy, the decoded number is a
property of greedy decoding, not of how well the student learned (docs/tiny_model.md §6).

Print it for a finished ``arith`` run (the variant's index names its targets and its scored
answers); the thresholds shown are those of :mod:`caopd.checks`::

    caopd greedy-reading results/index
    caopd greedy-reading results/index --variant caopd_lr3e4 --sdft sdft_lr3e4
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from caopd.artifacts import read_scored
from caopd.confidence import format_confidence

#: end of a stated value, as a symbol of its own (values of different lengths stay apart)
_END = ""


def greedy_decode(values: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """The string greedy decoding writes when the model's distribution over stated values is
    the (weighted) empirical distribution of ``values``, one character per token.

    At each position the next character is the one with the largest total weight among the
    values that agree with what has been written so far; a tie (equal up to float rounding,
    ``math.isclose``) goes to the smallest character, as ``argmax`` over digit tokens whose ids
    are in digit order takes the first. The end of a value competes as a character of its own,
    smaller than every other, so it wins a tie.

    Args:
        values: ``(n,)`` stated values as written, e.g. ``format_confidence(p)`` (``"0.38"``).
        weights: ``(n,)`` non-negative weights with a positive sum; ``None``: all 1.

    Examples:
        >>> greedy_decode(["0.10"] * 6 + ["0.85"] * 4)  # mean 0.40; greedy reads 0.10
        '0.10'
        >>> greedy_decode(["0.50"] * 3 + ["0.61"] * 2 + ["0.62"] * 2)  # digit-wise, not the value mode
        '0.61'
    """
    if not values:
        raise ValueError("greedy_decode: no values")
    w = [1.0] * len(values) if weights is None else [float(x) for x in weights]
    if len(w) != len(values):
        raise ValueError(f"greedy_decode: {len(w)} weights for {len(values)} values")
    if any(not x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"greedy_decode: weights must be non-negative with a positive sum, got {w}")
    alive = [(v, x) for v, x in zip(values, w) if x > 0]
    written = ""
    while True:
        pos = len(written)
        mass: dict[str, float] = defaultdict(float)
        for value, x in alive:
            mass[value[pos] if pos < len(value) else _END] += x
        best = max(mass.values())
        char = min(c for c, m in mass.items() if math.isclose(m, best, rel_tol=1e-9, abs_tol=1e-12))
        if char == _END:
            return written
        written += char
        alive = [(v, x) for v, x in alive if v.startswith(written)]


def greedy_by_level(targets: pd.DataFrame, source: str = "targets") -> dict[int, float]:
    """Level -> the greedy reading of that level's training targets.

    Args:
        targets: one row per training prompt with ``level`` and ``p_acc`` (``targets.parquet``);
            each ``p_acc`` is written as the rewrite writes it (:func:`format_confidence`).
        source: names ``targets`` in errors (e.g. its file).

    Raises:
        KeyError: a column is missing; ValueError: a ``p_acc`` is not in [0, 1] (naming its row).
    """
    missing = {"level", "p_acc"} - set(targets.columns)
    if missing:
        raise KeyError(f"{source}: missing columns {sorted(missing)}")
    bad = targets.index[~targets["p_acc"].between(0, 1)]
    if len(bad):
        raise ValueError(f"{source}: row {bad[0]}: p_acc {float(targets['p_acc'][bad[0]])} is not in [0, 1]")
    out = {}
    for level, group in targets.groupby("level"):
        out[int(level)] = float(greedy_decode([format_confidence(float(p)) for p in group["p_acc"]]))
    return out


def level_reading_metrics(scored: pd.DataFrame, decoded: Mapping[int, float], n_bins: int = 10) -> dict[str, float]:
    """The headline metrics (:func:`caopd.evaluation.summary.headline_metric_fns`) of the ideal
    level-conditional student: every answer of ``scored`` states ``decoded[its level]``, also
    those whose real stated confidence did not parse (the real metrics score those as 0).

    Args:
        scored: ``(n,)`` answers with ``prompt_id``, ``level`` and ``correct`` (``scored.parquet``).
        decoded: level -> stated confidence, e.g. :func:`greedy_by_level`.

    Raises:
        KeyError: an answer's level has no decoded value (naming the level and the prompt).
    """
    from caopd.evaluation.summary import headline_metric_fns

    missing = {"prompt_id", "level", "correct"} - set(scored.columns)
    if missing:
        raise KeyError(f"scored answers: missing columns {sorted(missing)}")
    confidence = []
    for prompt_id, level in zip(scored["prompt_id"], scored["level"]):
        if int(level) not in decoded:
            raise KeyError(f"answer {prompt_id}: level {int(level)} has no training targets "
                           f"(levels with targets: {sorted(decoded)})")
        confidence.append(decoded[int(level)])
    correct = scored["correct"].astype(float).to_numpy()
    return {name: float(fn(correct, confidence)) for name, fn in headline_metric_fns(n_bins).items()}


def report(index_dir: Path, variant: str = "caopd", sdft: str = "sdft") -> str:
    """The level-conditional greedy reading for ``variant`` beside its decoded metrics and the
    thresholds of :mod:`caopd.checks` that use ``sdft``."""
    from caopd.checks import THRESHOLDS as t
    from caopd.index import read_index, stage_dirs, training_targets

    root = index_dir.parent.parent
    index = read_index(index_dir, variant)
    # the targets stages of a rounds run, or the online windows kept in its distill artifacts
    target_dirs = stage_dirs(index, "targets", root) or stage_dirs(index, "distill", root)
    evaluate_dirs = stage_dirs(index, "evaluate", root)
    tables = []
    for d in target_dirs:
        table = training_targets(d)
        if table is not None:
            greedy_by_level(table, source=str(d))  # checks the targets, naming the artifact
            tables.append(table)
    if not tables or not evaluate_dirs:
        raise FileNotFoundError(f"{index_dir / f'{variant}.json'}: variant {variant!r} has no targets or "
                                "no evaluation yet")
    targets = pd.concat(tables, ignore_index=True)
    scored = read_scored(evaluate_dirs[0])
    metrics = json.loads((root / index["metrics"]).read_text())
    sdft_metrics = json.loads((root / read_index(index_dir, sdft)["metrics"]).read_text())
    decoded = greedy_by_level(targets)
    reading = level_reading_metrics(scored, decoded, n_bins=int(metrics.get("n_bins", 10)))

    lines = [f"{variant}: the ideal level-conditional student, read greedily (caopd greedy-reading)",
             f"{'level':>5} {'n':>4} {'target mean':>11} {'greedy':>6} {'accuracy':>8}"]
    for level in sorted(decoded):
        rows = scored[scored["level"] == level]
        mean = float(targets.loc[targets["level"] == level, "p_acc"].mean())
        lines.append(f"{level:>5} {len(rows):>4} {mean:>11.3f} {decoded[level]:>6.2f} {rows['correct'].mean():>8.3f}")
    lines.append(f"{'':>12}{'levels':>8} {'decoded':>8}   threshold")
    checks = [
        ("gap", reading["overconfidence_gap"], metrics["overconfidence_gap"],
         f"|gap| <= {t.calibrated_max_gap:.2f}"),
        ("ECE", reading["ece"], metrics["ece"],
         f"<= {t.ece_max_ratio * sdft_metrics['ece']:.3f} ({t.ece_max_ratio:g} x {sdft}'s)"),
        ("SPR", reading["spr"], metrics["spr"],
         f">= {sdft_metrics['spr'] + t.spr_min_gain:.3f} ({sdft}'s + {t.spr_min_gain:g})"),
    ]
    for name, b, d, threshold in checks:
        sign = "+" if name == "gap" else ""
        lines.append(f"{name:>12}{b:>{sign}8.3f} {d:>{sign}8.3f}   {threshold}")
    return "\n".join(lines)

