"""Evaluation: calibration metrics, bootstrap intervals, metrics.json summaries, figures.

- :mod:`caopd.evaluation.metrics` – accuracy, mean confidence, overconfidence gap, ECE
  (reference binning), Brier, SPR, AUROC, reliability bins; the :data:`METRICS` registry.
- :mod:`caopd.evaluation.bootstrap` – bootstrap intervals resampling questions; paired
  differences between variants.
- :mod:`caopd.evaluation.summary` – score responses with a task's verifier and build the
  ``metrics.json`` body (imports pandas).
- :mod:`caopd.evaluation.plots` – reliability diagram, histograms, variant comparisons,
  training curves (imports matplotlib).

Only the numpy-only modules are re-exported here, so ``import caopd.evaluation`` stays cheap.
"""

from __future__ import annotations

from caopd.evaluation.bootstrap import bootstrap_ci, paired_difference
from caopd.evaluation.metrics import (
    METRICS,
    METRICS_VERSION,
    MetricSpec,
    accuracy,
    auroc,
    brier,
    ece,
    mean_confidence,
    overconfidence_gap,
    reliability_bins,
    spr,
    validate_inputs,
)

__all__ = [
    "METRICS",
    "METRICS_VERSION",
    "MetricSpec",
    "accuracy",
    "auroc",
    "bootstrap_ci",
    "brier",
    "ece",
    "mean_confidence",
    "overconfidence_gap",
    "paired_difference",
    "reliability_bins",
    "spr",
    "validate_inputs",
]
