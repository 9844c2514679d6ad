"""Evaluation and training figures (DESIGN §8).

Every plotting function draws on the ``ax`` (or ``axes``) it is given and returns it; none
reads or writes files. Make figures with :func:`new_figure` (a plain
:class:`matplotlib.figure.Figure`, rendered with the Agg canvas, no pyplot and no global
backend state) and write them with :func:`save_figure`, which writes atomically.

Inputs are the JSON-able structures of ``metrics.json``: reliability bins from
:func:`caopd.evaluation.metrics.reliability_bins`; per-variant points
``{"variant", "accuracy", "mean_confidence", "ece", "ci95": {metric: [lo, hi]}}``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

__all__ = [
    "CURVE_COLUMNS",
    "accuracy_vs_confidence",
    "accuracy_vs_ece",
    "confidence_histogram",
    "new_figure",
    "pacc_histogram",
    "reliability_diagram",
    "save_figure",
    "training_curves",
]

# Training-curve columns drawn by training_curves, in panel order (those present are drawn).
CURVE_COLUMNS = ("loss", "divergence", "entropy", "mean_p_acc", "format_adherence")

_CORRECT_COLOR = "tab:green"
_WRONG_COLOR = "tab:red"


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None):
    """A ``(fig, axes)`` pair without pyplot; ``axes`` is an ``Axes`` or an array of them."""
    fig = Figure(figsize=figsize or (4.0 * ncols, 3.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``); the parent folder is created.
    Returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = target.suffix.lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format=fmt, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _diagonal(ax: Axes) -> None:
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=1.0,
            label="perfect calibration")


def reliability_diagram(ax: Axes, bins: Sequence[Mapping[str, Any]]) -> Axes:
    """Accuracy per confidence bin as bars, the diagonal, and each non-empty bin's count.

    Args:
        ax: the axes to draw on.
        bins: reliability bins (``lo``, ``hi``, ``count``, ``accuracy``, ``mean_confidence``;
            empty bins have ``accuracy`` ``None``).

    Draws one bar per bin (height 0 when empty), a marker at each non-empty bin's mean
    confidence, and one text label (``n=count``) per non-empty bin.
    """
    lo = np.array([float(b["lo"]) for b in bins])
    hi = np.array([float(b["hi"]) for b in bins])
    acc = np.array([np.nan if b["accuracy"] is None else float(b["accuracy"]) for b in bins])
    conf = np.array(
        [np.nan if b["mean_confidence"] is None else float(b["mean_confidence"]) for b in bins]
    )
    ax.bar(lo, np.nan_to_num(acc), width=hi - lo, align="edge", edgecolor="black",
           color="tab:blue", alpha=0.7, label="accuracy")
    nonempty = ~np.isnan(acc)
    ax.plot(conf[nonempty], acc[nonempty], "o", color="tab:orange", markersize=4,
            label="mean confidence")
    for b, a in zip(bins, acc, strict=True):
        if b["count"]:
            ax.text((float(b["lo"]) + float(b["hi"])) / 2.0, a + 0.02, f"n={b['count']}",
                    ha="center", va="bottom", fontsize=7)
    _diagonal(ax)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    ax.legend(loc="upper left", fontsize=7)
    return ax


def confidence_histogram(
    ax: Axes, correct: ArrayLike, confidence: ArrayLike, *, n_bins: int = 10
) -> Axes:
    """Histogram of confidence, correct and wrong responses stacked, over ``[0, 1]``.

    Args:
        correct: shape ``(n,)``, 0/1 or bool.
        confidence: shape ``(n,)``, floats in ``[0, 1]``.
        n_bins: equal-width bins.
    """
    c = np.asarray(correct, dtype=bool)
    p = np.asarray(confidence, dtype=np.float64)
    if c.shape != p.shape:
        raise ValueError(f"correct {c.shape} and confidence {p.shape} differ in shape")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ax.hist([p[c], p[~c]], bins=edges, stacked=True, color=[_CORRECT_COLOR, _WRONG_COLOR],
            edgecolor="black",
            label=[f"correct (n={int(c.sum())})", f"wrong (n={int((~c).sum())})"])
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("confidence")
    ax.set_ylabel("responses")
    ax.set_title("confidence by correctness")
    ax.legend(fontsize=7)
    return ax


def _ci_error(point: Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    """``(below, above)`` error-bar lengths from ``point["ci95"][metric]``, or None."""
    ci = (point.get("ci95") or {}).get(metric)
    if ci is None or ci[0] is None or ci[1] is None:
        return None
    value = float(point[metric])
    return max(value - float(ci[0]), 0.0), max(float(ci[1]) - value, 0.0)


#: Marker shapes, one per block of colours: variant i gets colour i mod N and shape i // N.
_MARKERS = "osD^vP*Xph"


def variant_styles(names: Sequence[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """``{name: (RGBA colour, marker)}``, distinct for every name, in order: tab10's colours with
    circles for up to 10 names (matplotlib's default cycle), tab20's for more (an ablation grid,
    e.g. config/ablations/kl_trajectory.yaml's 13), then the next marker shape per block."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    n = cmap.N
    return {name: (cmap(i % n), _MARKERS[(i // n) % len(_MARKERS)]) for i, name in enumerate(names)}


def _scatter_points(ax: Axes, points: Sequence[Mapping[str, Any]], x: str, y: str) -> None:
    """One errorbar series per point, named in the legend by its variant, CIs where given. A
    point with ``"hollow": True`` is drawn as an open marker in the colour of the variant it reads
    again (``"<variant> (expected)"``). No text beside the points: variants of similar accuracy
    and confidence would write over each other; colour and marker tell them apart."""
    base = [str(p["variant"]) for p in points if not p.get("hollow")]
    styles = variant_styles(base or [str(p["variant"]) for p in points])
    for point in points:
        name = str(point["variant"])
        color, marker = styles.get(name.removesuffix(" (expected)"), styles.get(name, (None, "o")))
        xerr = _ci_error(point, x)
        yerr = _ci_error(point, y)
        ax.errorbar(
            [float(point[x])], [float(point[y])],
            xerr=None if xerr is None else [[xerr[0]], [xerr[1]]],
            yerr=None if yerr is None else [[yerr[0]], [yerr[1]]],
            fmt=marker, color=color, capsize=3, label=name, mfc="none" if point.get("hollow") else None,
        )


def accuracy_vs_confidence(ax: Axes, points: Sequence[Mapping[str, Any]]) -> Axes:
    """Accuracy (y) against mean confidence (x) per variant, with the diagonal.

    The paper's Figure 1 view: below the diagonal = overconfident. Each point is
    ``{"variant", "accuracy", "mean_confidence", "ci95": {"accuracy": [lo, hi],
    "mean_confidence": [lo, hi]}}`` (``ci95`` optional); intervals are drawn as error bars.
    """
    _diagonal(ax)
    _scatter_points(ax, points, x="mean_confidence", y="accuracy")
    ax.set_xlim(0.0, 1.03)  # a variant that always states 1.00 sits on the edge
    ax.set_ylim(0.0, 1.03)
    ax.set_xlabel("mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs confidence")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


def accuracy_vs_ece(ax: Axes, points: Sequence[Mapping[str, Any]]) -> Axes:
    """Accuracy (y) against ECE (x) per variant; up and to the left is better.

    Each point is ``{"variant", "accuracy", "ece", "ci95": {"accuracy": [lo, hi],
    "ece": [lo, hi]}}`` (``ci95`` optional).
    """
    _scatter_points(ax, points, x="ece", y="accuracy")
    ax.set_xlim(left=0.0)
    ax.set_xlabel("ECE")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs ECE")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


def pacc_histogram(
    ax: Axes, p_acc_by_round: Mapping[int, Sequence[float]], *, n_bins: int = 10
) -> Axes:
    """Distribution of the confidence targets ``P_acc`` per training round (step outlines).

    Args:
        p_acc_by_round: round -> the ``P_acc`` of each prompt of that round (values in ``[0, 1]``).
        n_bins: equal-width bins over ``[0, 1]`` (a value of 1.0 lands in the last bin).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for rnd in sorted(p_acc_by_round):
        values = np.asarray(p_acc_by_round[rnd], dtype=np.float64)
        ax.hist(values, bins=edges, histtype="step", linewidth=1.5,
                label=f"round {rnd} (n={values.shape[0]})")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("P_acc")
    ax.set_ylabel("prompts")
    ax.set_title("confidence targets per round")
    ax.legend(fontsize=7)
    return ax


def training_curves(axes: Sequence[Axes], curves: pd.DataFrame) -> Sequence[Axes]:
    """One panel per :data:`CURVE_COLUMNS` column present in ``curves``, against ``step``.

    Args:
        axes: at least as many axes as there are curve columns present; unused axes are
            switched off.
        curves: a frame with a ``step`` column and any of ``loss``, ``divergence``,
            ``entropy``, ``mean_p_acc``, ``format_adherence`` (NaN points are skipped, so a
            column logged only at some steps draws fine).
    """
    if "step" not in curves.columns:
        raise ValueError(f"curves need a 'step' column; found {list(curves.columns)}")
    present = [col for col in CURVE_COLUMNS if col in curves.columns]
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) < len(present):
        raise ValueError(
            f"{len(present)} curves {present} need {len(present)} axes, got {len(flat)}"
        )
    for ax, col in zip(flat, present, strict=False):
        rows = curves[["step", col]].dropna()
        ax.plot(rows["step"].to_numpy(), rows[col].to_numpy(), linewidth=1.2, label=col)
        ax.set_xlabel("step")
        ax.set_ylabel(col)
        ax.set_title(col)
    for ax in flat[len(present):]:
        ax.set_axis_off()
    return axes
