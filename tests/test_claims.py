"""The five paper checks on hand-built metrics: each threshold on both sides of its boundary."""

from __future__ import annotations

import json

import pytest

from caopd.evaluation.claims import main, metrics_from_index, paper_checks

from conftest import publish_for_test


def _m(acc, conf, ece, spr, ci_low=None):
    gap = conf - acc
    return {"accuracy": acc, "mean_confidence": conf, "overconfidence_gap": gap, "ece": ece,
            "spr": spr, "ci95": {"overconfidence_gap": [gap - 0.04 if ci_low is None else ci_low, gap + 0.04]}}


def _passing():
    return {"base": _m(0.50, 0.80, 0.30, 0.00), "sdft": _m(0.60, 0.99, 0.39, 0.05),
            "caopd": _m(0.60, 0.62, 0.10, 0.40)}


def _by_name(metrics):
    return {c.name: c.passed for c in paper_checks(metrics)}


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
        ("caopd", _m(0.56, 0.58, 0.10, 0.40), "capability_kept"),            # 0.56 < 0.60 - 0.03
        ("base", _m(0.61, 0.80, 0.30, 0.00), "capability_kept"),             # base beats caopd
    ],
)
def test_each_threshold_fails_on_its_side_only(variant, change, failing):
    metrics = _passing()
    metrics[variant] = change
    result = _by_name(metrics)
    assert not result[failing]
    assert all(passed for name, passed in result.items() if name != failing)


def test_boundaries_are_inclusive():
    metrics = _passing()
    metrics["sdft"] = _m(0.50, 0.65, 0.30, 0.0)      # gap exactly +0.15
    metrics["caopd"] = _m(0.50, 0.55, 0.15, 0.2)     # |gap| 0.05, ECE half, SPR +0.2, acc = base
    metrics["base"] = _m(0.50, 0.80, 0.30, 0.0)
    assert all(_by_name(metrics).values())


def test_missing_variant_is_named():
    metrics = _passing()
    del metrics["caopd"]
    with pytest.raises(KeyError, match="caopd"):
        paper_checks(metrics)


def test_reads_a_run_through_its_index(tmp_path, capsys):
    index = tmp_path / "results" / "index"
    index.mkdir(parents=True)
    for variant, metrics in _passing().items():
        path = tmp_path / "results" / "evaluate" / variant / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics))
        publish_for_test(path.parent)  # the readers verify the artifact they read
        (index / f"{variant}.json").write_text(json.dumps(
            {"variant": variant, "stages": [], "metrics": f"results/evaluate/{variant}/metrics.json"}))
    assert metrics_from_index(index)["caopd"]["spr"] == 0.40
    assert main([str(index)]) == 0
    assert capsys.readouterr().out.count("PASS") == 5
    (index / "caopd_b.json").write_text((index / "sdft.json").read_text())  # sdft as "caopd"
    assert main([str(index), "--caopd", "caopd_b"]) == 1
    assert "FAIL  confidence_informative" in capsys.readouterr().out
    (index / "base.json").unlink()
    with pytest.raises(FileNotFoundError, match="base"):
        metrics_from_index(index)


def test_expected_confidence_is_reported_but_never_decides():
    metrics = _passing()
    metrics["caopd"] = _m(0.60, 0.50, 0.10, 0.40)  # decoded gap -0.10: fails
    metrics["caopd"]["expected_confidence"] = {"n": 500, "overconfidence_gap": 0.01,
                                               "ci95": {"overconfidence_gap": [-0.02, 0.04]}}
    check = {c.name: c for c in paper_checks(metrics)}["caopd_calibrated"]
    assert not check.passed
    assert "expected stated confidence: gap +0.010 [-0.020, +0.040], not checked" in check.detail
    metrics["caopd"] = _m(0.60, 0.62, 0.10, 0.40)
    metrics["caopd"]["expected_confidence"] = {"n": 500, "overconfidence_gap": -0.30, "ci95": {}}
    check = {c.name: c for c in paper_checks(metrics)}["caopd_calibrated"]
    assert check.passed and check.detail.endswith("gap -0.300, not checked")
