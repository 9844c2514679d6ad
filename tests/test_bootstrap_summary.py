"""Bootstrap intervals (questions resampled), paired differences, metrics.json summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from caopd.evaluation.bootstrap import bootstrap_ci, paired_difference, resample_rows
from caopd.evaluation.metrics import accuracy, auroc, brier, ece, spr
from caopd.evaluation.summary import HEADLINE, SCORED_COLUMNS, summarize, to_jsonable

FNS = {"accuracy": accuracy, "ece": ece, "auroc": auroc}


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)
    c = rng.random(n) < p
    return c, p


def test_bootstrap_is_deterministic_for_a_seed():
    c, p = _data()
    a = bootstrap_ci(c, p, FNS, n_resamples=200, seed=7)
    b = bootstrap_ci(c, p, FNS, n_resamples=200, seed=7)
    other = bootstrap_ci(c, p, FNS, n_resamples=200, seed=8)
    assert a == b
    assert a != other


def test_bootstrap_interval_brackets_the_estimate():
    c, p = _data(n=300)
    out = bootstrap_ci(c, p, FNS, n_resamples=300, seed=0)
    for name, fn in FNS.items():
        lo, hi = out[name]
        assert lo <= fn(c, p) <= hi, name
        assert lo < hi


def test_bootstrap_degenerate_data_gives_point_interval():
    c, p = np.ones(20), np.ones(20)
    out = bootstrap_ci(c, p, {"ece": ece, "brier": brier}, n_resamples=50)
    assert out == {"ece": (0.0, 0.0), "brier": (0.0, 0.0)}


def test_bootstrap_is_nan_safe():
    # One incorrect row among 30: some replicates lack it and AUROC is NaN there.
    c = np.ones(30)
    c[0] = 0
    p = np.linspace(0.1, 1.0, 30)
    lo, hi = bootstrap_ci(c, p, {"auroc": auroc}, n_resamples=200)["auroc"]
    assert math.isfinite(lo) and math.isfinite(hi)
    # Only one class anywhere: undefined in every replicate.
    lo, hi = bootstrap_ci(np.ones(5), p[:5], {"auroc": auroc}, n_resamples=20)["auroc"]
    assert math.isnan(lo) and math.isnan(hi)


def test_groups_resample_whole_questions():
    # Each question has one correct and one wrong response: any resample of whole questions
    # has accuracy exactly 0.5; resampling rows does not.
    n_q = 40
    c = np.tile([1, 0], n_q)
    p = np.full(2 * n_q, 0.5)
    groups = np.repeat(np.arange(n_q), 2)
    rng = np.random.default_rng(0)
    shuffle = rng.permutation(2 * n_q)  # rows of a question need not be adjacent
    grouped = bootstrap_ci(c[shuffle], p[shuffle], {"accuracy": accuracy}, n_resamples=100,
                           groups=groups[shuffle])
    assert grouped["accuracy"] == (0.5, 0.5)
    ungrouped = bootstrap_ci(c, p, {"accuracy": accuracy}, n_resamples=100)
    assert ungrouped["accuracy"][0] < 0.5 < ungrouped["accuracy"][1]


def test_resample_rows_keeps_questions_whole_with_unequal_sizes():
    groups = np.array(["q1", "q2", "q2", "q3", "q3", "q3", "q1", "q4"])
    sizes = {"q1": 2, "q2": 2, "q3": 3, "q4": 1}
    for rows in resample_rows(len(groups), groups, n_resamples=30, seed=1):
        drawn = groups[rows]
        for q, size in sizes.items():
            assert (drawn == q).sum() % size == 0
        assert set(rows.tolist()) <= set(range(len(groups)))


def test_resample_rows_without_groups_has_n_rows():
    out = list(resample_rows(9, None, n_resamples=4, seed=0))
    assert len(out) == 4 and all(r.shape == (9,) for r in out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_resamples": 0}, "n_resamples"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"groups": np.arange(3)}, "groups"),
    ],
)
def test_bootstrap_errors(kwargs, message):
    c, p = _data(n=10)
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(c, p, FNS, **kwargs)


def test_paired_difference_identities():
    c, p = _data()
    same = paired_difference(c, p, c, p, ece, n_resamples=100, seed=0)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    wrong = paired_difference(np.ones(50), np.full(50, 0.9), np.zeros(50), np.full(50, 0.9),
                              accuracy, n_resamples=100)
    assert wrong == {"diff": 1.0, "lo": 1.0, "hi": 1.0}


def test_paired_difference_is_tighter_than_independent():
    c, p = _data(n=200, seed=3)
    # Variant b: same correctness, confidence shifted down by 0.1 (clipped).
    q = np.clip(p - 0.1, 0.0, 1.0)
    out = paired_difference(c, p, c, q, brier, n_resamples=200, seed=0)
    assert out["diff"] == pytest.approx(brier(c, p) - brier(c, q))
    assert out["lo"] <= out["diff"] <= out["hi"]
    ci_a = bootstrap_ci(c, p, {"brier": brier}, n_resamples=200)["brier"]
    assert out["hi"] - out["lo"] < ci_a[1] - ci_a[0]


def test_paired_difference_length_mismatch():
    with pytest.raises(ValueError, match="same rows"):
        paired_difference([1, 0], [0.5, 0.5], [1], [0.5], accuracy, n_resamples=10)


def _scored(correct, raw, answer_parsed=None):
    raw = np.asarray(raw, dtype=float)
    valid = ~np.isnan(raw)
    return pd.DataFrame({
        "correct": np.asarray(correct, dtype=bool),
        "confidence_raw": raw,
        "confidence_valid": valid,
        "confidence": np.where(valid, raw, 0.0),
        "answer_parsed": np.ones(len(raw), bool) if answer_parsed is None else answer_parsed,
    })


def test_summarize_matches_direct_metrics():
    correct = [1, 0, 1, 1, 0, 0, 1, 0]
    raw = [0.9, 0.8, np.nan, 0.7, 0.3, np.nan, 0.6, 0.9]
    scored = _scored(correct, raw, answer_parsed=np.array([1, 1, 1, 1, 0, 1, 1, 0], bool))
    out = summarize(scored, n_resamples=100, seed=0)
    conf = np.nan_to_num(np.asarray(raw), nan=0.0)
    c = np.asarray(correct)
    assert out["n"] == 8
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["mean_confidence"] == pytest.approx(conf.mean())
    assert out["ece"] == pytest.approx(ece(c, conf))
    assert out["brier"] == pytest.approx(brier(c, conf))
    assert out["spr"] == pytest.approx(spr(c, conf))
    assert out["auroc"] == pytest.approx(auroc(c, conf))
    assert out["format_adherence"] == pytest.approx(6 / 8)
    assert out["answer_parse_rate"] == pytest.approx(6 / 8)
    assert set(out["ci95"]) == set(HEADLINE)
    assert all(len(v) == 2 and v[0] <= v[1] for v in out["ci95"].values())
    v = out["valid_confidence_only"]
    keep = ~np.isnan(np.asarray(raw))
    assert v["n"] == 6
    assert v["ece"] == pytest.approx(ece(c[keep], np.asarray(raw)[keep]))
    assert v["mean_confidence"] == pytest.approx(np.asarray(raw)[keep].mean())
    assert len(out["bins"]) == 10 and sum(b["count"] for b in out["bins"]) == 8
    json.dumps(out, allow_nan=False)  # strict JSON


def test_summarize_is_deterministic_and_seeded():
    scored = _scored(*_data(n=60))
    a = summarize(scored, n_resamples=50, seed=1)
    assert a == summarize(scored, n_resamples=50, seed=1)
    assert a["ci95"] != summarize(scored, n_resamples=50, seed=2)["ci95"]


def test_summarize_without_valid_confidence_and_without_bootstrap():
    out = summarize(_scored([1, 0, 1], [np.nan] * 3), n_resamples=0)
    assert out["format_adherence"] == 0.0
    assert out["mean_confidence"] == 0.0
    assert out["valid_confidence_only"] == {"n": 0, **{k: None for k in HEADLINE}}
    assert out["ci95"] == {k: None for k in HEADLINE}
    json.dumps(out, allow_nan=False)


def test_summarize_single_class_auroc_is_none():
    out = summarize(_scored([1, 1], [0.5, 0.9]), n_resamples=20)
    assert out["auroc"] is None
    assert out["ci95"]["auroc"] == [None, None]
    assert out["spr"] == 0.0


def test_summarize_rejects_bad_frames():
    with pytest.raises(ValueError, match="lacks columns"):
        summarize(pd.DataFrame({"correct": [True]}))
    with pytest.raises(ValueError, match="empty"):
        summarize(_scored([], []))


def test_to_jsonable():
    out = to_jsonable({
        "a": np.float64("nan"), "b": (1, np.int64(2)), 3: np.array([0.5, np.inf]),
        "d": np.bool_(True), "e": None, "f": "x",
    })
    assert out == {"a": None, "b": [1, 2], "3": [0.5, None], "d": True, "e": None, "f": "x"}
    assert type(out["b"][1]) is int


def test_score_rows_with_science_task():
    pytest.importorskip("caopd.tasks")
    responses = [
        "<reasoning>x</reasoning>\n<answer>\nA\n</answer>\nConfidence: 0.8",
        "<answer>\nB\n</answer>\nConfidence: 0.9",
        "<answer>\nC\n</answer>\nConfidence: very sure",
        "I do not know.",
    ]
    from caopd.evaluation.summary import score_rows

    scored = score_rows(responses, ["A", "A", "C", "D"], "science")
    assert list(scored.columns) == list(SCORED_COLUMNS)
    assert scored["correct"].tolist() == [True, False, True, False]
    assert scored["confidence_valid"].tolist() == [True, True, False, False]
    assert scored["confidence"].tolist() == [0.8, 0.9, 0.0, 0.0]
    assert np.isnan(scored["confidence_raw"].iloc[2])
    assert scored["answer_parsed"].tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="length mismatch"):
        score_rows(responses, ["A"], "science")
