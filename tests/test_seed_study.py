"""Seed-study aggregation on hand-built seeds: rows, pass counts, t intervals, report, figure."""

from __future__ import annotations

import math

import pytest

from caopd.checks import paper_checks
from caopd.diagnostics.seed_study import (SeedRun, describe_cpu, mean_interval, record_seconds, recorded_seconds,
                                          seed_row, summary_rows, write_study)


def _m(acc, conf, ece, spr):
    gap = conf - acc
    return {"accuracy": acc, "mean_confidence": conf, "overconfidence_gap": gap, "ece": ece,
            "spr": spr, "ci95": {"overconfidence_gap": [gap - 0.04, gap + 0.04]},
            "expected_confidence": {"n": 10, "overconfidence_gap": gap / 2}}


def _run(seed, caopd_conf):
    metrics = {"base": _m(0.50, 0.80, 0.30, 0.00), "sdft": _m(0.60, 0.99, 0.39, 0.05),
               "caopd": _m(0.60, caopd_conf, 0.10, 0.40)}
    paired = {"sdft": {"diff": 0.0, "lo": -0.02, "hi": 0.02}, "base": {"diff": 0.1, "lo": 0.05, "hi": 0.15}}
    return SeedRun(seed, metrics, paired, paper_checks(metrics, paired))


def test_mean_interval_is_students_t():
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * sd / sqrt(n)
    assert mean - lo == pytest.approx(hi - mean)
    assert mean_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert math.isnan(mean_interval([0.7])[1]) and math.isnan(mean_interval([])[0])
    assert mean_interval([1.0, float("nan"), 3.0])[0] == 2.0


def test_rows_and_pass_counts(tmp_path):
    runs = [_run(0, 0.62), _run(1, 0.70), _run(2, 0.58)]  # caopd gaps +0.02, +0.10, -0.02
    row = seed_row(runs[1])
    assert row["gap_caopd"] == pytest.approx(0.10) and not row["check_caopd_calibrated"]
    assert row["gap_closer"] == pytest.approx(0.39 - 0.10) and row["checks_passed"] == 4
    assert row["spr_gain"] == pytest.approx(0.35) and row["ece_ratio"] == pytest.approx(0.10 / 0.39)
    summary = {s["name"]: s for s in summary_rows([seed_row(r) for r in runs])}
    assert summary["caopd_calibrated"]["passed"] == 2 and summary["sdft_overconfident"]["passed"] == 3
    assert summary["gap_caopd"]["mean"] == pytest.approx(0.10 / 3)
    assert summary["gap_caopd"]["min"] == pytest.approx(-0.02) and summary["gap_caopd"]["max"] == pytest.approx(0.10)
    assert summary["expected_gap_caopd"]["mean"] == pytest.approx(0.05 / 3)
    report = write_study(tmp_path, runs, {0: 60.0, 1: 120.0, 2: 90.0})
    assert "caopd_calibrated        2 of 3" in report and "(2.0 min)" in report
    assert (tmp_path / "seed_study.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "per_seed.tsv").read_text().splitlines()[0].startswith("seed\t")


def _processor(number: int, flags: str) -> str:
    return (f"processor\t: {number}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            f"model name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n")


@pytest.mark.parametrize(("flags", "vector"), [
    ("avx avx2 fma avx512f avx512bw", "avx512"), ("avx avx2 fma", "avx2"), ("avx", "avx"), ("", "no avx"),
])
def test_two_cpus_of_one_name_are_told_apart_by_family_model_and_vector_width(flags, vector):
    text = _processor(0, flags) + "\n" + _processor(1, "avx avx2 avx512f")  # only the first block counts
    assert describe_cpu(text) == f"AMD EPYC (family 25 model 17, {vector})"


def test_a_cpuinfo_without_a_model_name_describes_nothing():
    assert describe_cpu("processor\t: 0\nflags\t: avx2\n") is None
    assert describe_cpu("model name\t: Neoverse\n") == "Neoverse (no avx)"


def test_a_seeds_seconds_are_kept_for_aggregate_only_and_absent_where_not_timed(tmp_path):
    assert recorded_seconds(tmp_path) is None
    record_seconds(tmp_path, 336.04)
    assert recorded_seconds(tmp_path) == 336.0 and not list(tmp_path.glob("*.tmp"))
