"""The five paper checks on hand-built metrics: each threshold on both sides of its boundary;
the paired accuracy difference on hand-built answers; ``caopd checks`` and the compare rule's
``checks.txt``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from caopd.checks import (
    CHECKS,
    THRESHOLDS,
    ChecksUndefined,
    Thresholds,
    format_checks,
    metrics_from_index,
    paired_accuracy,
    paper_checks,
    write_checks,
)
from caopd.cli import main as cli_main

from conftest import publish_for_test


def _m(acc, conf, ece, spr, ci_low=None):
    gap = conf - acc
    return {"accuracy": acc, "mean_confidence": conf, "overconfidence_gap": gap, "ece": ece,
            "spr": spr, "ci95": {"overconfidence_gap": [gap - 0.04 if ci_low is None else ci_low, gap + 0.04]}}


def _passing():
    return {"base": _m(0.50, 0.80, 0.30, 0.00), "sdft": _m(0.60, 0.99, 0.39, 0.05),
            "caopd": _m(0.60, 0.62, 0.10, 0.40)}


def _pair(diff, lo, hi):
    return {"diff": diff, "lo": lo, "hi": hi}


def _paired(sdft_lo=-0.02, base_lo=0.05):
    return {"sdft": _pair(0.0, sdft_lo, 0.02), "base": _pair(0.10, base_lo, 0.15)}


def _by_name(metrics, paired=None):
    return {c.name: c.passed for c in paper_checks(metrics, paired or _paired())}


def test_all_pass_on_a_run_that_shows_the_effect():
    assert all(_by_name(_passing()).values())


@pytest.mark.parametrize(
    ("variant", "change", "failing"),
    [
        ("sdft", _m(0.60, 0.74, 0.39, 0.05), "sdft_overconfident"),          # gap +0.14 < 0.15
        ("sdft", _m(0.60, 0.99, 0.39, 0.05, ci_low=-0.01), "sdft_overconfident"),  # CI touches 0
        ("caopd", _m(0.60, 0.66, 0.10, 0.40), "caopd_calibrated"),           # gap +0.06
        ("caopd", _m(0.60, 0.54, 0.10, 0.40), "caopd_calibrated"),           # gap -0.06
        ("caopd", _m(0.60, 0.62, 0.20, 0.40), "ece_halved"),                 # 0.20 > 0.39 / 2
        ("caopd", _m(0.60, 0.62, 0.10, 0.24), "confidence_informative"),     # 0.24 < 0.05 + 0.2
    ],
)
def test_each_threshold_fails_on_its_side_only(variant, change, failing):
    metrics = _passing()
    metrics[variant] = change
    result = _by_name(metrics)
    assert not result[failing]
    assert all(passed for name, passed in result.items() if name != failing)


@pytest.mark.parametrize(("paired", "passed"), [
    (_paired(sdft_lo=-0.031), False),   # caopd may be 0.031 worse than sdft
    (_paired(base_lo=-0.031), False),   # ... or than the base model
    (_paired(sdft_lo=-0.029, base_lo=-0.029), True),
])
def test_capability_is_paired_non_inferiority(paired, passed):
    assert THRESHOLDS.accuracy_margin == 0.03
    result = _by_name(_passing(), paired)
    assert result["capability_kept"] is passed
    assert all(ok for name, ok in result.items() if name != "capability_kept")


def _answers(correct, samples=1):
    n = len(correct) // samples
    return pd.DataFrame({"prompt_id": [f"q{i // samples:03d}" for i in range(n * samples)],
                         "sample_index": [i % samples for i in range(n * samples)],
                         "correct": np.asarray(correct, dtype=bool)})


def test_paired_accuracy_of_identical_answers_is_exactly_zero():
    a = _answers(np.arange(200) % 3 == 0)
    assert paired_accuracy(a, a.sample(frac=1.0, random_state=1)) == {"diff": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_accuracy_is_the_difference_and_narrower_than_unpaired():
    # 400 questions; b is right on the first 200, a on the same 200 plus 8 more: diff = 8/400.
    b = np.arange(400) < 200
    a = np.arange(400) < 208
    result = paired_accuracy(_answers(a), _answers(b))
    assert result["diff"] == pytest.approx(0.02)
    # the replicates differ only by how many of the 8 discordant questions they draw: never < 0
    assert 0.0 <= result["lo"] < 0.02 < result["hi"] <= 0.05
    # an unpaired interval of each accuracy alone is about +-0.05 wide
    assert result["hi"] - result["lo"] < 0.04


def test_paired_accuracy_resamples_whole_questions_and_refuses_other_rows():
    a = _answers([1, 1, 0, 0] * 50, samples=4)   # 50 questions, 4 samples each
    b = _answers([1, 0, 0, 0] * 50, samples=4)
    assert paired_accuracy(a, b)["diff"] == pytest.approx(0.25)
    assert paired_accuracy(a, b)["lo"] == pytest.approx(0.25)  # every question differs alike
    with pytest.raises(ValueError, match="same"):
        paired_accuracy(a, b.iloc[:-1])


def test_the_thresholds_are_the_papers():
    """The values every check, the greedy reading and the README read (issue 12)."""
    assert THRESHOLDS == Thresholds(sdft_min_gap=0.15, calibrated_max_gap=0.05, ece_max_ratio=0.5,
                                    spr_min_gain=0.2, accuracy_margin=0.03)


_STEP = 1e-6  # past a boundary by far more than the 1e-9 tolerance


@pytest.mark.parametrize("side", ["at", "past"])
@pytest.mark.parametrize("check", ["sdft_overconfident", "caopd_calibrated_above", "caopd_calibrated_below",
                                   "ece_halved", "confidence_informative", "capability_vs_sdft",
                                   "capability_vs_base"])
def test_each_check_at_and_just_past_its_boundary(check, side):
    """Each threshold of :data:`THRESHOLDS` exactly (passes) and ``_STEP`` beyond it (fails), the
    other checks passing throughout."""
    t, d = THRESHOLDS, (0.0 if side == "at" else _STEP)
    metrics, paired = _passing(), _paired()
    name = check
    if check == "sdft_overconfident":
        metrics["sdft"] = _m(0.50, 0.50 + t.sdft_min_gap - d, 0.39, 0.05)
    elif check.startswith("caopd_calibrated"):
        sign = 1 if check.endswith("above") else -1
        metrics["caopd"] = _m(0.60, 0.60 + sign * (t.calibrated_max_gap + d), 0.10, 0.40)
        name = "caopd_calibrated"
    elif check == "ece_halved":
        metrics["caopd"] = _m(0.60, 0.62, t.ece_max_ratio * 0.39 + d, 0.40)
    elif check == "confidence_informative":
        metrics["caopd"] = _m(0.60, 0.62, 0.10, 0.05 + t.spr_min_gain - d)
    else:
        other = check.rsplit("_", 1)[1]
        # "above -margin" up to the float tolerance: a low end of exactly -margin passes
        paired[other] = _pair(0.0, -t.accuracy_margin - d, 0.02)
        name = "capability_kept"
    result = _by_name(metrics, paired)
    assert result[name] is (side == "at"), (check, side)
    assert all(passed for other, passed in result.items() if other != name)


def test_boundaries_are_inclusive():
    metrics = _passing()
    metrics["sdft"] = _m(0.50, 0.65, 0.30, 0.0)      # gap exactly +0.15
    metrics["caopd"] = _m(0.50, 0.55, 0.15, 0.2)     # |gap| 0.05, ECE half, SPR +0.2, acc = base
    metrics["base"] = _m(0.50, 0.80, 0.30, 0.0)
    assert all(_by_name(metrics, _paired(sdft_lo=-0.0299, base_lo=-0.0299)).values())


def test_missing_variant_is_named():
    metrics = _passing()
    del metrics["caopd"]
    with pytest.raises(KeyError, match="caopd"):
        paper_checks(metrics, _paired())
    with pytest.raises(KeyError, match="base"):
        paper_checks(_passing(), {"sdft": _pair(0, 0, 0)})


def test_reads_a_run_through_its_index(tmp_path, capsys):
    index = tmp_path / "results" / "index"
    index.mkdir(parents=True)
    answers = {"base": np.arange(300) < 150, "sdft": np.arange(300) < 180, "caopd": np.arange(300) < 180}
    for variant, metrics in _passing().items():
        path = tmp_path / "results" / "evaluate" / variant / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics))
        _answers(answers[variant]).to_parquet(path.parent / "scored.parquet")
        publish_for_test(path.parent)  # the readers verify the artifact they read
        (index / f"{variant}.json").write_text(json.dumps(
            {"variant": variant, "stages": [], "metrics": f"results/evaluate/{variant}/metrics.json"}))
    assert metrics_from_index(index)["caopd"]["spr"] == 0.40
    assert cli_main(["checks", str(index)]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 5 and "caopd - sdft +0.000 [+0.000, +0.000]" in out
    (index / "caopd_b.json").write_text((index / "sdft.json").read_text())  # sdft as "caopd"
    assert cli_main(["checks", str(index), "--caopd", "caopd_b"]) == 1
    assert "FAIL  confidence_informative" in capsys.readouterr().out
    (index / "base.json").unlink()
    with pytest.raises(FileNotFoundError, match="base"):
        metrics_from_index(index)


def test_the_compare_rule_writes_what_caopd_checks_prints(tmp_path, capsys):
    evaluations = {}
    answers = {"base": np.arange(300) < 150, "sdft": np.arange(300) < 180, "caopd": np.arange(300) < 180}
    for variant, metrics in _passing().items():
        evaluations[variant] = tmp_path / "evaluate" / variant
        evaluations[variant].mkdir(parents=True)
        (evaluations[variant] / "metrics.json").write_text(json.dumps(metrics))
        _answers(answers[variant]).to_parquet(evaluations[variant] / "scored.parquet")
    out = tmp_path / "checks.txt"
    checks = write_checks({**evaluations, "other": evaluations["base"]}, out)
    assert [c.name for c in checks] == list(CHECKS) and all(c.passed for c in checks)
    assert out.read_text() == format_checks(checks)
    assert out.read_text().splitlines()[0] == (
        "PASS  sdft_overconfident       gap(sdft) +0.390, 95% CI low +0.350 (need >= +0.15, > 0)")
    assert write_checks({"caopd": evaluations["caopd"]}, out) is None
    assert out.read_text() == ("not checked: the paper's checks read the variants base, sdft, caopd; "
                               "this run has no base, sdft\n")
    _answers(answers["base"][:-1]).to_parquet(evaluations["base"] / "scored.parquet")  # other questions
    assert write_checks(evaluations, out) is None
    assert out.read_text().startswith("not checked: paired accuracy needs the same (prompt_id, sample_index)")
    (evaluations["sdft"] / "metrics.json").write_text(json.dumps({**_passing()["sdft"], "ci95": {
        "overconfidence_gap": None}}))  # evaluation.bootstrap: 0
    with pytest.raises(ChecksUndefined, match="evaluation.bootstrap: 0"):
        paper_checks({**_passing(), "sdft": json.loads((evaluations["sdft"] / "metrics.json").read_text())},
                     _paired())


def test_expected_confidence_is_reported_but_never_decides():
    metrics = _passing()
    metrics["caopd"] = _m(0.60, 0.50, 0.10, 0.40)  # decoded gap -0.10: fails
    metrics["caopd"]["expected_confidence"] = {"n": 500, "overconfidence_gap": 0.01,
                                               "ci95": {"overconfidence_gap": [-0.02, 0.04]}}
    check = {c.name: c for c in paper_checks(metrics, _paired())}["caopd_calibrated"]
    assert not check.passed
    assert "expected stated confidence: gap +0.010 [-0.020, +0.040], not checked" in check.detail
    metrics["caopd"] = _m(0.60, 0.62, 0.10, 0.40)
    metrics["caopd"]["expected_confidence"] = {"n": 500, "overconfidence_gap": -0.30, "ci95": {}}
    check = {c.name: c for c in paper_checks(metrics, _paired())}["caopd_calibrated"]
    assert check.passed and check.detail.endswith("gap -0.300, not checked")
