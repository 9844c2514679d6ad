"""Calibration metrics: hand-derivable identities, reference binning, exact pairwise counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caopd.evaluation.metrics import (
    METRICS,
    accuracy,
    auroc,
    bin_edges,
    brier,
    ece,
    mean_confidence,
    overconfidence_gap,
    reliability_bins,
    spr,
    validate_inputs,
)

ALL_FNS = [accuracy, mean_confidence, overconfidence_gap, ece, brier, spr, auroc]


def test_all_correct_full_confidence_is_perfect():
    c, p = np.ones(7), np.ones(7)
    assert ece(c, p) == 0.0
    assert brier(c, p) == 0.0
    assert overconfidence_gap(c, p) == 0.0


def test_all_wrong_full_confidence_is_worst():
    c, p = np.zeros(5), np.ones(5)
    assert ece(c, p) == 1.0
    assert brier(c, p) == 1.0
    assert overconfidence_gap(c, p) == 1.0
    assert accuracy(c, p) == 0.0
    assert mean_confidence(c, p) == 1.0


def test_constant_confidence_spr_zero_auroc_half():
    c = np.array([1, 0, 1, 1, 0, 0, 1])
    p = np.full(7, 0.8)
    assert spr(c, p) == 0.0
    assert auroc(c, p) == 0.5


def test_perfect_separation_and_inversion():
    c = np.array([1, 1, 0, 0])
    assert spr(c, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auroc(c, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert spr(c, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auroc(c, [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_ties_hand_counted():
    # correct: 0.9, 0.5 ; incorrect: 0.5, 0.1  -> 4 pairs
    # (0.9,0.5) >, (0.9,0.1) >, (0.5,0.5) tie, (0.5,0.1) >  -> 3 strict, 1 tie
    c = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.5, 0.5, 0.1])
    assert spr(c, p) == pytest.approx(3 / 4)
    assert auroc(c, p) == pytest.approx(3.5 / 4)


def test_single_class_conventions():
    assert spr([1, 1, 1], [0.2, 0.5, 0.9]) == 0.0
    assert spr([0, 0], [0.2, 0.5]) == 0.0
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(auroc([0], [0.3]))


def test_single_sample():
    c, p = [1], [0.7]
    assert accuracy(c, p) == 1.0
    assert ece(c, p) == pytest.approx(0.3)
    assert brier(c, p) == pytest.approx(0.09)
    assert overconfidence_gap(c, p) == pytest.approx(-0.3)
    assert spr(c, p) == 0.0
    assert math.isnan(auroc(c, p))


def test_bin_edges_are_float64_linspace():
    edges = bin_edges(10)
    assert edges.dtype == np.float64
    np.testing.assert_array_equal(edges, np.linspace(0, 1, 11))
    # The float64 edges are not all the decimals they print as; this decides ties below.
    assert edges[1] == 0.1 and edges[2] == 0.2
    assert edges[3] > 0.3 and edges[6] > 0.6 and edges[7] > 0.7


def test_values_on_bin_edges_hand_computed():
    # Reference binning: np.digitize(conf, linspace(0, 1, 11)[1:-1]), right=False, so a value
    # equal to an interior edge goes to the bin above it -- *if* the float64 edge equals it.
    # linspace(0,1,11)[3] is 0.30000000000000004 > 0.3, so 0.3 stays in bin 2 [0.2, 0.3).
    #
    #   conf  correct  bin
    #   0.0   1        0   [0.0, 0.1)
    #   0.1   0        1   [0.1, 0.2)   (edge 0.1 is exact -> bin above)
    #   0.2   1        2   [0.2, 0.3)   (edge 0.2 is exact -> bin above)
    #   0.3   0        2   [0.2, 0.3)   (edge 0.30000000000000004 > 0.3 -> bin below)
    #   1.0   1        9   [0.9, 1.0]   (outer edge open)
    #   1.0   0        9
    #
    #   bin 0: n=1, acc 1.0, conf 0.00 -> |gap| 1.00, weight 1/6
    #   bin 1: n=1, acc 0.0, conf 0.10 -> |gap| 0.10, weight 1/6
    #   bin 2: n=2, acc 0.5, conf 0.25 -> |gap| 0.25, weight 2/6
    #   bin 9: n=2, acc 0.5, conf 1.00 -> |gap| 0.50, weight 2/6
    #   ECE = (1.0 + 0.1 + 2*0.25 + 2*0.5) / 6 = 2.6 / 6
    c = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 1.0])
    assert ece(c, p) == pytest.approx(2.6 / 6, abs=1e-15)
    counts = [b["count"] for b in reliability_bins(c, p)]
    assert counts == [1, 1, 2, 0, 0, 0, 0, 0, 0, 2]


def _ece_reference_rule(correct, confidence, n_bins=10):
    """ECE with the reference's stated rule: outer edges set to -inf/+inf, digitize - 1, loop."""
    edges = np.linspace(0, 1, n_bins + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    idx = np.clip(np.digitize(confidence, edges) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = idx == b
        if mask.sum():
            gap = abs(confidence[mask].mean() - correct[mask].mean())
            total += mask.sum() / len(confidence) * gap
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [10, 7, 15])
def test_ece_matches_reference_rule(seed, n_bins):
    rng = np.random.default_rng(seed)
    # Include every k/n_bins and k/10 exactly, plus rounded random values.
    p = np.concatenate(
        [np.arange(n_bins + 1) / n_bins, np.arange(11) / 10, np.round(rng.random(300), 2)]
    )
    c = (rng.random(p.shape[0]) < p).astype(float)
    assert ece(c, p, n_bins=n_bins) == pytest.approx(_ece_reference_rule(c, p, n_bins), abs=1e-12)


def test_perfectly_calibrated_set_has_zero_ece():
    # Within each bin, accuracy equals the mean confidence.
    conf, corr = [], []
    for value, n, k in [(0.05, 20, 1), (0.25, 4, 1), (0.5, 2, 1), (0.75, 4, 3), (1.0, 3, 3)]:
        conf += [value] * n
        corr += [1] * k + [0] * (n - k)
    # Bin [0.6, 0.7): confidences 0.62 and 0.68 (mean 0.65), 13 of 20 correct.
    conf += [0.62, 0.68] * 10
    corr += [1] * 13 + [0] * 7
    assert ece(corr, conf) == pytest.approx(0.0, abs=1e-12)
    for b in reliability_bins(corr, conf):
        if b["count"]:
            assert b["accuracy"] == pytest.approx(b["mean_confidence"], abs=1e-12)


def _brute_pairs(c, p):
    pos, neg = p[c == 1], p[c == 0]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return gt, eq, pos.size * neg.size


@pytest.mark.parametrize("seed", range(5))
def test_spr_auroc_match_bruteforce_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    p = np.round(rng.random(n), 2)  # ~100 distinct values -> many ties
    p[: n // 10] = 1.0  # a saturated block of ties too
    c = (rng.random(n) < 0.3 + 0.5 * p).astype(int)
    gt, eq, pairs = _brute_pairs(c, p)
    assert spr(c, p) == pytest.approx(gt / pairs, rel=1e-12)
    assert auroc(c, p) == pytest.approx((gt + 0.5 * eq) / pairs, rel=1e-12)


def test_permuting_rows_changes_nothing():
    rng = np.random.default_rng(3)
    p = np.round(rng.random(200), 1)
    c = rng.random(200) < p
    perm = rng.permutation(200)
    for fn in ALL_FNS:
        assert fn(c[perm], p[perm]) == pytest.approx(fn(c, p), abs=1e-12), fn.__name__
    counts = [b["count"] for b in reliability_bins(c, p)]
    assert counts == [b["count"] for b in reliability_bins(c[perm], p[perm])]


def test_bool_and_int_inputs_agree():
    p = [0.9, 0.2, 0.6, 0.4]
    for fn in ALL_FNS:
        expected = fn([1, 0, 1, 0], p)
        assert fn([True, False, True, False], p) == expected == fn([1.0, 0.0, 1.0, 0.0], p)


def test_reliability_bins_structure():
    bins = reliability_bins([1, 0, 1], [0.05, 0.05, 0.95], n_bins=4)
    assert len(bins) == 4
    assert [b["lo"] for b in bins] == [0.0, 0.25, 0.5, 0.75]
    assert [b["hi"] for b in bins] == [0.25, 0.5, 0.75, 1.0]
    assert bins[0] == {"lo": 0.0, "hi": 0.25, "count": 2, "accuracy": 0.5, "mean_confidence": 0.05}
    assert bins[1] == {"lo": 0.25, "hi": 0.5, "count": 0, "accuracy": None, "mean_confidence": None}
    assert bins[3]["accuracy"] == 1.0


def test_registry_directions():
    assert list(METRICS) == [
        "accuracy", "mean_confidence", "overconfidence_gap", "ece", "brier", "spr", "auroc",
    ]
    assert METRICS["accuracy"].higher_is_better is True
    assert METRICS["spr"].higher_is_better is True
    assert METRICS["auroc"].higher_is_better is True
    assert METRICS["ece"].higher_is_better is False
    assert METRICS["brier"].higher_is_better is False
    assert METRICS["mean_confidence"].higher_is_better is None
    assert METRICS["overconfidence_gap"].higher_is_better is None
    assert METRICS["overconfidence_gap"].target == 0.0
    for name, spec in METRICS.items():
        assert spec.name == name
        assert isinstance(spec.fn([1, 0], [0.7, 0.3]), float)


@pytest.mark.parametrize(
    ("correct", "confidence", "message"),
    [
        ([], [], "empty input"),
        ([1, 0], [0.5], "length mismatch"),
        ([1, np.nan, 0], [0.5, 0.5, 0.5], "correct contains NaN (first at index 1)"),
        ([1, 0, 0], [0.5, 0.5, np.nan], "confidence contains NaN (first at index 2)"),
        ([1, 0, 0], [0.5, -0.1, 0.5], "confidence outside [0, 1] (first at index 1"),
        ([1, 0, 0], [0.5, 0.5, 1.0001], "confidence outside [0, 1] (first at index 2"),
        ([1, 2, 0], [0.5, 0.5, 0.5], "correct not in {0, 1} (first at index 1"),
        ([1, 0, 0.5], [0.5, 0.5, 0.5], "correct not in {0, 1} (first at index 2"),
        ([[1, 0]], [[0.5, 0.5]], "must be 1-D"),
        (["a", "b"], [0.5, 0.5], "must be numeric"),
    ],
)
def test_validation_errors(correct, confidence, message):
    with pytest.raises(ValueError) as err:
        validate_inputs(correct, confidence)
    assert message in str(err.value)
    for fn in ALL_FNS:
        with pytest.raises(ValueError):
            fn(correct, confidence)


@pytest.mark.parametrize("n_bins", [0, -1, 2.5, True])
def test_bad_n_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        ece([1], [0.5], n_bins=n_bins)
