"""Calibration metrics over per-response correctness and verbal confidence.

Every function takes the same two arrays and returns a Python float:

- ``correct``: shape ``(n,)``, bool or numbers in ``{0, 1}`` (1 = the verifier accepted it);
- ``confidence``: shape ``(n,)``, floats in ``[0, 1]`` (the stated confidence; the caller maps
  an unparseable confidence to 0.0, the reference's convention, before calling).

Both are converted to float64 and checked by :func:`validate_inputs` (empty input, length
mismatch, NaN, confidence outside ``[0, 1]``, correctness outside ``{0, 1}`` raise
``ValueError`` naming the first offending index). No I/O; the functions are pure.

ECE is binned exactly as the reference (``eval/calibration_metrics.py`` of the CaOPD release):
ten equal-width bins from ``np.linspace(0, 1, n_bins + 1)`` in float64, assigned with
``np.digitize`` on the interior edges, so the outer edges are open. Because the float64
linspace edges are not the decimal numbers they print as (``0.30000000000000004``,
``0.6000000000000001``, ``0.7000000000000001``), a confidence of exactly 0.3, 0.6 or 0.7 falls
in the bin *below* that edge, while 0.1, 0.2, 0.4, 0.5, 0.8 and 0.9 fall in the bin above.
That is the reference's behaviour, kept on purpose so our ECE equals theirs.

SPR and AUROC are exact and O(n log n) (sort + ``searchsorted``), not the reference's
``n_correct x n_incorrect`` boolean matrix, which does not fit in memory beyond ~10^5 rows.

:data:`METRICS` registers the headline metrics with their direction
(``higher_is_better``) for tables, bootstrap intervals and plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "METRICS",
    "METRICS_VERSION",
    "MetricSpec",
    "accuracy",
    "auroc",
    "bin_edges",
    "brier",
    "ece",
    "mean_confidence",
    "overconfidence_gap",
    "reliability_bins",
    "spr",
    "validate_inputs",
]

# Bump when the definition of any metric below changes (it enters the evaluate stage's key
# through the code fingerprint and is written into metrics.json).
METRICS_VERSION = "1"


def validate_inputs(
    correct: ArrayLike, confidence: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Check and convert the two metric inputs.

    Args:
        correct: shape ``(n,)``; bool, or numbers each exactly 0 or 1.
        confidence: shape ``(n,)``; finite floats in ``[0, 1]``.

    Returns:
        ``(correct, confidence)`` as 1-D float64 arrays of shape ``(n,)``.

    Raises:
        ValueError: empty input, not 1-D, length mismatch, NaN in either, confidence outside
            ``[0, 1]``, or correctness not in ``{0, 1}``; the message names the problem and
            the first offending index.
    """
    c = np.asarray(correct)
    p = np.asarray(confidence)
    for name, arr in (("correct", c), ("confidence", p)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric or bool, got dtype {arr.dtype}")
    if c.shape[0] == 0 or p.shape[0] == 0:
        raise ValueError(f"empty input: len(correct)={c.shape[0]}, len(confidence)={p.shape[0]}")
    if c.shape[0] != p.shape[0]:
        raise ValueError(
            f"length mismatch: len(correct)={c.shape[0]} != len(confidence)={p.shape[0]}"
        )
    c = c.astype(np.float64)
    p = p.astype(np.float64)

    bad = np.flatnonzero(np.isnan(c))
    if bad.size:
        raise ValueError(f"correct contains NaN (first at index {bad[0]})")
    bad = np.flatnonzero(np.isnan(p))
    if bad.size:
        raise ValueError(f"confidence contains NaN (first at index {bad[0]})")
    bad = np.flatnonzero((p < 0.0) | (p > 1.0))
    if bad.size:
        raise ValueError(
            f"confidence outside [0, 1] (first at index {bad[0]}: {p[bad[0]]!r})"
        )
    bad = np.flatnonzero((c != 0.0) & (c != 1.0))
    if bad.size:
        raise ValueError(f"correct not in {{0, 1}} (first at index {bad[0]}: {c[bad[0]]!r})")
    return c, p


def accuracy(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Share of correct responses, ``mean(correct)``."""
    c, _ = validate_inputs(correct, confidence)
    return float(np.mean(c))


def mean_confidence(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Mean stated confidence, ``mean(confidence)``."""
    _, p = validate_inputs(correct, confidence)
    return float(np.mean(p))


def overconfidence_gap(correct: ArrayLike, confidence: ArrayLike) -> float:
    """``mean(confidence) - mean(correct)``; positive = overconfident, 0 is the target."""
    c, p = validate_inputs(correct, confidence)
    return float(np.mean(p) - np.mean(c))


def brier(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Brier score ``mean((confidence - correct)^2)``; 0 is perfect, lower is better."""
    c, p = validate_inputs(correct, confidence)
    return float(np.mean((p - c) ** 2))


def bin_edges(n_bins: int = 10) -> NDArray[np.float64]:
    """The reference's bin edges ``np.linspace(0, 1, n_bins + 1)``: float64, shape ``(n_bins+1,)``.

    Raises ValueError unless ``n_bins`` is a positive integer.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return np.linspace(0.0, 1.0, int(n_bins) + 1, dtype=np.float64)


def _bin_stats(
    c: NDArray[np.float64], p: NDArray[np.float64], n_bins: int
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-bin ``(edges, counts, sum_correct, sum_confidence)`` for validated arrays.

    Bin ``b`` holds ``edges[b] <= p < edges[b+1]`` for interior edges, with the outer edges
    open (``np.digitize(p, edges[1:-1])``, the reference's assignment).
    """
    edges = bin_edges(n_bins)
    idx = np.digitize(p, edges[1:-1])  # 0 .. n_bins-1
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_c = np.bincount(idx, weights=c, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    return edges, counts, sum_c, sum_p


def ece(correct: ArrayLike, confidence: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins (reference binning).

    ``ECE = sum_b (n_b / n) * |acc_b - conf_b|`` over non-empty bins, where ``acc_b`` and
    ``conf_b`` are the mean correctness and mean confidence of bin ``b``. In ``[0, 1]``.
    """
    c, p = validate_inputs(correct, confidence)
    _, counts, sum_c, sum_p = _bin_stats(c, p, n_bins)
    nonempty = counts > 0
    n_b = counts[nonempty].astype(np.float64)
    gaps = np.abs(sum_c[nonempty] / n_b - sum_p[nonempty] / n_b)
    return float(np.sum((n_b / c.shape[0]) * gaps))


def reliability_bins(
    correct: ArrayLike, confidence: ArrayLike, n_bins: int = 10
) -> list[dict[str, Any]]:
    """Per-bin statistics for a reliability diagram and ``metrics.json``.

    Returns:
        ``n_bins`` dicts in bin order, each ``{"lo", "hi", "count", "accuracy",
        "mean_confidence"}``; ``lo``/``hi`` are the float64 linspace edges (the outer bins
        also take anything below ``lo`` / at ``hi``); an empty bin has ``count`` 0 and
        ``accuracy`` and ``mean_confidence`` ``None``.
    """
    c, p = validate_inputs(correct, confidence)
    edges, counts, sum_c, sum_p = _bin_stats(c, p, n_bins)
    out: list[dict[str, Any]] = []
    for b in range(len(counts)):
        k = int(counts[b])
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": k,
                "accuracy": float(sum_c[b] / k) if k else None,
                "mean_confidence": float(sum_p[b] / k) if k else None,
            }
        )
    return out


def _pair_counts(c: NDArray[np.float64], p: NDArray[np.float64]) -> tuple[int, int, int]:
    """``(n_greater, n_tied, n_pairs)`` over all (correct i, incorrect j) pairs.

    ``n_greater`` counts ``p_i > p_j``, ``n_tied`` counts ``p_i == p_j``; exact integers,
    O(n log n): sort both classes and ``searchsorted`` the correct confidences into the
    incorrect ones (sorted queries are ~3x faster than unsorted ones at n = 10^6).
    """
    pos = np.sort(p[c == 1.0])
    neg = np.sort(p[c == 0.0])
    n_pairs = int(pos.shape[0]) * int(neg.shape[0])
    if n_pairs == 0:
        return 0, 0, 0
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    upto = np.searchsorted(neg, pos, side="right")  # negatives at or below
    n_greater = int(np.sum(below, dtype=np.int64))
    n_tied = int(np.sum(upto - below, dtype=np.int64))
    return n_greater, n_tied, n_pairs


def spr(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Strict pairwise ranking: share of (correct, incorrect) pairs with strictly higher
    confidence on the correct one; ties score 0.

    A constant-confidence model scores 0 (where AUROC gives 0.5). 0.0 when only one class is
    present (the reference's convention). Exact, O(n log n).
    """
    c, p = validate_inputs(correct, confidence)
    n_greater, _, n_pairs = _pair_counts(c, p)
    if n_pairs == 0:
        return 0.0
    return n_greater / n_pairs


def auroc(correct: ArrayLike, confidence: ArrayLike) -> float:
    """Area under the ROC curve of confidence as a score for correctness.

    ``P(conf_correct > conf_incorrect) + 0.5 * P(tie)`` over all (correct, incorrect) pairs,
    i.e. the Mann-Whitney U statistic with midranks divided by ``n_correct * n_incorrect``.
    NaN when only one class is present. Exact, O(n log n).
    """
    c, p = validate_inputs(correct, confidence)
    n_greater, n_tied, n_pairs = _pair_counts(c, p)
    if n_pairs == 0:
        return float("nan")
    return (2 * n_greater + n_tied) / (2 * n_pairs)


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: the key used in ``metrics.json`` and tables.
        fn: ``fn(correct, confidence) -> float``.
        higher_is_better: ``True`` / ``False``, or ``None`` when neither direction is better
            (then ``target``, if set, is the ideal value).
        target: the ideal value for a metric without a direction (``overconfidence_gap``: 0).
    """

    name: str
    fn: Callable[[ArrayLike, ArrayLike], float]
    higher_is_better: bool | None
    target: float | None = None


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("accuracy", accuracy, higher_is_better=True),
        MetricSpec("mean_confidence", mean_confidence, higher_is_better=None),
        MetricSpec("overconfidence_gap", overconfidence_gap, higher_is_better=None, target=0.0),
        MetricSpec("ece", ece, higher_is_better=False),
        MetricSpec("brier", brier, higher_is_better=False),
        MetricSpec("spr", spr, higher_is_better=True),
        MetricSpec("auroc", auroc, higher_is_better=True),
    )
}
