"""Score responses with a task's verifier and summarise them into the ``metrics.json`` body.

:func:`score_rows` turns responses and ground truths into one row per response (correctness
from the task's one verifier, confidence from :func:`caopd.confidence.parse_confidence`);
:func:`summarize` computes the headline metrics of DESIGN §8 with bootstrap 95% intervals, a
valid-confidence-only block and the reliability bins. :func:`to_jsonable` makes the result
safe for ``json.dump`` (NaN -> ``None``, numpy scalars -> Python).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from caopd.evaluation.bootstrap import bootstrap_ci
from caopd.evaluation.metrics import METRICS, METRICS_VERSION, ece, reliability_bins

__all__ = [
    "HEADLINE",
    "SCORED_COLUMNS",
    "headline_metric_fns",
    "score_rows",
    "summarize",
    "to_jsonable",
]

# Columns of a scored frame, in order.
SCORED_COLUMNS = ("correct", "confidence_raw", "confidence_valid", "confidence", "answer_parsed")

# Headline metrics, in the order they appear in metrics.json (all registered in METRICS).
HEADLINE = ("accuracy", "mean_confidence", "overconfidence_gap", "ece", "brier", "spr", "auroc")


def score_rows(
    responses: Sequence[str], ground_truths: Sequence[str], task_name: str
) -> pd.DataFrame:
    """Verify and parse each response.

    Args:
        responses: ``n`` model completions.
        ground_truths: ``n`` ground truths in the task's canonical form (a letter A-D for
            arith/science, the JSON list of ``{"Action", "Action_Input"}`` for tooluse).
        task_name: a registered task (``caopd.tasks.get_task``).

    Returns:
        ``n`` rows with columns ``correct`` (bool, the task's verifier), ``confidence_raw``
        (float, NaN when unparseable), ``confidence_valid`` (bool), ``confidence`` (the raw
        value, or 0.0 when unparseable: the reference's convention for headline numbers) and
        ``answer_parsed`` (bool, ``extract_answer`` found an answer).
    """
    from caopd.confidence import parse_confidence
    from caopd.tasks import get_task

    if len(responses) != len(ground_truths):
        raise ValueError(
            f"length mismatch: {len(responses)} responses, {len(ground_truths)} ground truths"
        )
    task = get_task(task_name)
    correct: list[bool] = []
    raw: list[float] = []
    parsed: list[bool] = []
    for response, truth in zip(responses, ground_truths, strict=True):
        correct.append(bool(task.verify(response, truth)))
        conf = parse_confidence(response)
        raw.append(math.nan if conf is None else float(conf))
        parsed.append(task.extract_answer(response) is not None)
    confidence_raw = np.asarray(raw, dtype=np.float64)
    valid = ~np.isnan(confidence_raw)
    return pd.DataFrame(
        {
            "correct": np.asarray(correct, dtype=bool),
            "confidence_raw": confidence_raw,
            "confidence_valid": valid,
            "confidence": np.where(valid, confidence_raw, 0.0),
            "answer_parsed": np.asarray(parsed, dtype=bool),
        },
        columns=list(SCORED_COLUMNS),
    )


def headline_metric_fns(n_bins: int = 10) -> dict[str, Any]:
    """Name -> ``fn(correct, confidence)`` for the :data:`HEADLINE` metrics, ECE with ``n_bins``."""
    fns: dict[str, Any] = {name: METRICS[name].fn for name in HEADLINE}
    fns["ece"] = functools.partial(ece, n_bins=n_bins)
    return fns


def _headline(correct: ArrayLike, confidence: ArrayLike, n_bins: int) -> dict[str, float]:
    fns = headline_metric_fns(n_bins)
    return {name: float(fn(correct, confidence)) for name, fn in fns.items()}


def summarize(
    scored: pd.DataFrame,
    *,
    n_bins: int = 10,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` body of one scored evaluation.

    Args:
        scored: a frame with the :data:`SCORED_COLUMNS` (from :func:`score_rows`), ``n >= 1`` rows.
        n_bins: ECE / reliability bins.
        n_resamples: bootstrap replicates for ``ci95``; 0 skips the bootstrap (``ci95`` values
            are then ``None``).
        seed: bootstrap seed; the output is deterministic for a fixed seed.
        groups: shape ``(n,)``, the question of each row when questions have several responses
            (whole questions are resampled), or ``None``.

    Returns:
        A JSON-safe dict (NaN -> ``None``): ``n``, the :data:`HEADLINE` metrics (unparseable
        confidence counted as 0.0), ``format_adherence`` (share of rows whose confidence
        parsed), ``answer_parse_rate``, ``ci95`` (metric -> ``[lo, hi]``),
        ``valid_confidence_only`` (``n`` and the headline metrics on rows whose confidence
        parsed; ``n`` 0 and metrics ``None`` if none did), ``bins`` (reliability bins),
        ``n_bins``, ``n_resamples``, ``seed`` and ``metrics_version``.
    """
    missing = [col for col in SCORED_COLUMNS if col not in scored.columns]
    if missing:
        raise ValueError(
            f"scored frame lacks columns {missing}; it has {list(scored.columns)} "
            "(build it with caopd.evaluation.summary.score_rows)"
        )
    if len(scored) == 0:
        raise ValueError("cannot summarize an empty evaluation (0 rows)")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    correct = scored["correct"].to_numpy(dtype=np.float64)
    confidence = scored["confidence"].to_numpy(dtype=np.float64)
    valid = scored["confidence_valid"].to_numpy(dtype=bool)

    out: dict[str, Any] = {"n": int(len(scored))}
    out.update(_headline(correct, confidence, n_bins))
    out["format_adherence"] = float(np.mean(valid))
    out["answer_parse_rate"] = float(np.mean(scored["answer_parsed"].to_numpy(dtype=bool)))
    if n_resamples > 0:
        intervals = bootstrap_ci(
            correct,
            confidence,
            headline_metric_fns(n_bins),
            n_resamples=n_resamples,
            seed=seed,
            groups=groups,
        )
        out["ci95"] = {name: list(intervals[name]) for name in HEADLINE}
    else:
        out["ci95"] = {name: None for name in HEADLINE}

    n_valid = int(valid.sum())
    block: dict[str, Any] = {"n": n_valid}
    if n_valid:
        raw = scored["confidence_raw"].to_numpy(dtype=np.float64)
        block.update(_headline(correct[valid], raw[valid], n_bins))
    else:
        block.update({name: None for name in HEADLINE})
    out["valid_confidence_only"] = block
    out["bins"] = reliability_bins(correct, confidence, n_bins)
    out["n_bins"] = int(n_bins)
    out["n_resamples"] = int(n_resamples)
    out["seed"] = int(seed)
    out["metrics_version"] = METRICS_VERSION
    return to_jsonable(out)


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dump`` writes as strict JSON.

    Dicts (keys -> ``str``), lists, tuples and numpy arrays become dicts and lists; numpy
    scalars become Python scalars; NaN and +-inf become ``None``. Other values pass through.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj
