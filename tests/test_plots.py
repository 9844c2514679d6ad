"""Figures: each function draws on tiny data and returns its axes with the expected artists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from caopd.evaluation.metrics import reliability_bins
from caopd.evaluation.plots import (
    accuracy_vs_confidence,
    accuracy_vs_ece,
    confidence_histogram,
    new_figure,
    pacc_histogram,
    reliability_diagram,
    save_figure,
    training_curves,
    variant_styles,
)

CORRECT = np.array([1, 0, 1, 1, 0])
CONF = np.array([0.95, 0.9, 0.55, 0.05, 0.5])
POINTS = [
    {"variant": "base", "accuracy": 0.4, "mean_confidence": 0.9, "ece": 0.5,
     "ci95": {"accuracy": [0.3, 0.5], "mean_confidence": [0.85, 0.95], "ece": [0.4, 0.6]}},
    {"variant": "caopd", "accuracy": 0.6, "mean_confidence": 0.62, "ece": 0.05},  # no ci95
]


def _legend_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_reliability_diagram():
    fig, ax = new_figure()
    bins = reliability_bins(CORRECT, CONF)
    assert reliability_diagram(ax, bins) is ax
    assert len(ax.patches) == 10  # one bar per bin, empty bins at height 0
    nonempty = [b for b in bins if b["count"]]
    assert len(nonempty) == 3  # [0.0,0.1) x1, [0.5,0.6) x2, [0.9,1.0] x2
    assert sorted(t.get_text() for t in ax.texts) == ["n=1", "n=2", "n=2"]
    assert len(ax.lines) == 2  # mean-confidence markers + diagonal
    assert "perfect calibration" in _legend_labels(ax)


def test_confidence_histogram():
    fig, ax = new_figure()
    assert confidence_histogram(ax, CORRECT, CONF) is ax
    assert len(ax.patches) == 20  # two stacked series x 10 bins
    assert _legend_labels(ax) == ["correct (n=3)", "wrong (n=2)"]
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == len(CONF)
    with pytest.raises(ValueError):
        confidence_histogram(ax, CORRECT, CONF[:3])


def test_accuracy_vs_confidence():
    fig, ax = new_figure()
    assert accuracy_vs_confidence(ax, POINTS) is ax
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    assert containers[0].has_xerr and containers[0].has_yerr
    assert not containers[1].has_xerr and not containers[1].has_yerr
    assert _legend_labels(ax) == ["perfect calibration", "base", "caopd"]
    assert len(ax.texts) == 0  # the legend names the points: labels beside them would overlap
    assert ax.get_xlabel() == "mean confidence" and ax.get_ylabel() == "accuracy"


def test_a_grid_of_variants_gets_distinct_styles_and_an_expected_point_its_variants_colour():
    names = [f"v{i}" for i in range(23)]  # more than tab20's colours: the marker changes
    styles = variant_styles(names)
    assert len(set(styles.values())) == 23 and styles["v0"][1] == "o" and styles["v20"][1] == "s"
    fig, ax = new_figure()
    points = [{**POINTS[0], "variant": name} for name in names[:13]]
    accuracy_vs_confidence(ax, points + [{**POINTS[1], "variant": "v3 (expected)", "hollow": True}])
    colours = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert len({tuple(colours[n]) for n in names[:13]}) == 13
    assert tuple(colours["v3 (expected)"]) == tuple(colours["v3"])


def test_accuracy_vs_ece():
    fig, ax = new_figure()
    assert accuracy_vs_ece(ax, POINTS) is ax
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 2
    assert _legend_labels(ax) == ["base", "caopd"]
    assert ax.get_xlabel() == "ECE"


def test_pacc_histogram():
    fig, ax = new_figure()
    rounds = {2: [0.0, 0.5, 0.5, 1.0], 1: [0.125, 0.875, 1.0]}
    assert pacc_histogram(ax, rounds) is ax
    assert len(ax.patches) == 2  # one step outline per round
    assert _legend_labels(ax) == ["round 1 (n=3)", "round 2 (n=4)"]


def test_training_curves():
    fig, axes = new_figure(1, 3)
    curves = pd.DataFrame({
        "step": [0, 1, 2, 3],
        "loss": [2.0, 1.5, 1.2, 1.0],
        "entropy": [np.nan, 0.9, np.nan, 0.7],
        "unrelated": [1, 2, 3, 4],
    })
    assert training_curves(axes, curves) is axes
    assert [ax.get_ylabel() for ax in axes[:2]] == ["loss", "entropy"]
    assert len(axes[0].lines) == 1 and len(axes[0].lines[0].get_xdata()) == 4
    assert len(axes[1].lines[0].get_xdata()) == 2  # NaN points skipped
    assert not axes[2].axison
    with pytest.raises(ValueError, match="step"):
        training_curves(axes, curves.drop(columns="step"))
    with pytest.raises(ValueError, match="axes"):
        training_curves(axes[:1], curves)


def test_save_figure_writes_png_atomically(tmp_path):
    fig, ax = new_figure()
    reliability_diagram(ax, reliability_bins(CORRECT, CONF))
    target = tmp_path / "sub" / "reliability.png"
    assert save_figure(fig, target) == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in target.parent.iterdir()] == ["reliability.png"]  # no temp left
