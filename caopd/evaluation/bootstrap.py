"""Bootstrap confidence intervals and paired differences, resampling questions.

The unit of resampling is the question: with one response per question that is the row; when
a question has several responses (``groups`` gives each row's question index), whole questions
are drawn with replacement and all their rows come along. Intervals are percentile intervals
over ``n_resamples`` replicates; replicates where a metric is undefined (NaN, e.g. AUROC of a
resample with only one class) are ignored (``np.nanpercentile``). Deterministic for a seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from caopd.evaluation.metrics import validate_inputs

__all__ = ["bootstrap_ci", "paired_difference", "resample_rows"]

MetricFn = Callable[[ArrayLike, ArrayLike], float]


def _check_options(n_resamples: int, alpha: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise ValueError(f"n_resamples must be an integer, got {n_resamples!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def resample_rows(
    n_rows: int, groups: ArrayLike | None, n_resamples: int, seed: int
) -> Iterator[NDArray[np.int64]]:
    """Row indices of each bootstrap replicate, drawing whole questions with replacement.

    Args:
        n_rows: number of rows ``n``.
        groups: shape ``(n,)``, the question of each row (any sortable values), or ``None``
            for one row per question.
        n_resamples: number of replicates ``R``.
        seed: seed of ``np.random.default_rng``; the same seed yields the same replicates.

    Yields:
        ``R`` int64 arrays of row indices into ``0..n-1``, one replicate at a time (memory
        O(n)). Without ``groups`` each has length ``n``; with groups, the total size of the
        drawn questions (it varies between replicates when questions differ in size).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n_rows, size=n_rows)
        return
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n_rows:
        raise ValueError(f"groups must have shape ({n_rows},), got {g.shape}")
    _, inverse = np.unique(g, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Rows ordered by question; question q owns rows order[starts[q] : starts[q] + sizes[q]].
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_groups = sizes.shape[0]
    for _ in range(n_resamples):
        q = rng.integers(0, n_groups, size=n_groups)
        lens = sizes[q]
        # Position within each drawn question (0..len-1), the questions laid end to end.
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        yield order[np.repeat(starts[q], lens) + offsets].astype(np.int64)


def _percentile_interval(values: NDArray[np.float64], alpha: float) -> tuple[float, float]:
    """``(lo, hi)`` percentile interval ignoring NaN; ``(nan, nan)`` if every value is NaN."""
    if np.all(np.isnan(values)):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(lo), float(hi)


def bootstrap_ci(
    correct: ArrayLike,
    confidence: ArrayLike,
    metric_fns: Mapping[str, MetricFn],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of several metrics, resampling questions.

    Args:
        correct: shape ``(n,)``, 0/1 or bool.
        confidence: shape ``(n,)``, floats in ``[0, 1]``.
        metric_fns: name -> ``fn(correct, confidence) -> float``.
        n_resamples: number of bootstrap replicates (>= 1).
        seed: RNG seed; the same seed gives the same intervals.
        alpha: the interval covers ``1 - alpha`` (0.05 -> 95%).
        groups: shape ``(n,)``, question of each row, or ``None`` (one row per question).

    Returns:
        name -> ``(lo, hi)``; ``(nan, nan)`` where a metric is undefined in every replicate.
    """
    _check_options(n_resamples, alpha)
    c, p = validate_inputs(correct, confidence)
    replicates = resample_rows(c.shape[0], groups, n_resamples, seed)
    values = {name: np.empty(n_resamples, dtype=np.float64) for name in metric_fns}
    for r, rows in enumerate(replicates):
        c_r, p_r = c[rows], p[rows]
        for name, fn in metric_fns.items():
            values[name][r] = fn(c_r, p_r)
    return {name: _percentile_interval(v, alpha) for name, v in values.items()}


def paired_difference(
    a_correct: ArrayLike,
    a_confidence: ArrayLike,
    b_correct: ArrayLike,
    b_confidence: ArrayLike,
    metric_fn: MetricFn,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> dict[str, float]:
    """Difference ``metric(a) - metric(b)`` of two variants on the same questions.

    Rows are aligned: row ``i`` of ``a`` and of ``b`` answer the same question. Each replicate
    draws one set of question indices and applies it to both variants, so the interval
    reflects the paired design (narrower than two independent intervals).

    Args:
        a_correct, a_confidence: variant A, shape ``(n,)`` each.
        b_correct, b_confidence: variant B, shape ``(n,)`` each, same questions in the same order.
        metric_fn: ``fn(correct, confidence) -> float``.
        n_resamples, seed, alpha, groups: as in :func:`bootstrap_ci` (``groups`` is shared).

    Returns:
        ``{"diff": metric(a) - metric(b), "lo": ..., "hi": ...}`` (percentile interval of the
        replicated differences; NaN where undefined).
    """
    _check_options(n_resamples, alpha)
    ac, ap = validate_inputs(a_correct, a_confidence)
    bc, bp = validate_inputs(b_correct, b_confidence)
    if ac.shape[0] != bc.shape[0]:
        raise ValueError(
            f"paired variants must have the same rows: len(a)={ac.shape[0]} != len(b)={bc.shape[0]}"
        )
    diff = float(metric_fn(ac, ap) - metric_fn(bc, bp))
    replicates = resample_rows(ac.shape[0], groups, n_resamples, seed)
    values = np.empty(n_resamples, dtype=np.float64)
    for r, rows in enumerate(replicates):
        values[r] = metric_fn(ac[rows], ap[rows]) - metric_fn(bc[rows], bp[rows])
    lo, hi = _percentile_interval(values, alpha)
    return {"diff": diff, "lo": lo, "hi": hi}
