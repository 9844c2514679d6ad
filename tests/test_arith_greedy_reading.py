"""The greedy reading of a target distribution and the ideal level-conditional arith student, by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from caopd.cli import main
from caopd.diagnostics.arith_greedy_reading import level_reading_metrics, greedy_by_level, greedy_decode, report

from conftest import publish_for_test


def test_a_point_mass_is_read_as_itself():
    assert greedy_decode(["0.75"] * 3) == "0.75"
    assert greedy_decode(["1.00"]) == "1.00"


def test_greedy_reads_the_majority_branch_not_the_mean():
    # mean 0.6 * 0.10 + 0.4 * 0.85 = 0.40; the first digit after "0." is 1 with weight 0.6
    assert greedy_decode(["0.10"] * 6 + ["0.85"] * 4) == "0.10"
    # "1" carries 0.6 of the mass at the first character
    assert greedy_decode(["1.00"] * 6 + ["0.20"] * 4) == "1.00"
    # 0.4 on "1.00" loses the first character to the 0.6 that starts with "0"
    assert greedy_decode(["1.00"] * 4 + ["0.90"] * 4 + ["0.20"] * 2) == "0.90"


def test_greedy_is_digit_wise_not_the_mode_of_the_values():
    # the most frequent value is 0.50 (3 of 7), but the tenths digit 6 carries 4 of 7
    assert greedy_decode(["0.50"] * 3 + ["0.61"] * 2 + ["0.62"] * 2) == "0.61"


def test_ties_go_to_the_smallest_digit():
    # the nine values of K = 8, once each: "0" carries 8/9 first, then every tenths digit 1/9
    values = [f"{n / 8:.2f}" for n in range(9)]
    assert greedy_decode(values) == "0.00"
    assert greedy_decode(["0.30", "0.70"]) == "0.30"
    # equal up to float rounding is a tie: 0.1 + 0.2 != 0.3 in floats
    assert greedy_decode(["0.70", "0.40"], weights=[0.3, 0.1 + 0.2]) == "0.40"


def test_weights_count_like_repeats():
    assert greedy_decode(["0.20", "0.80"], weights=[1, 3]) == greedy_decode(["0.20"] + ["0.80"] * 3) == "0.80"
    assert greedy_decode(["0.20", "0.80"], weights=[0, 1]) == "0.80"


def test_the_end_of_a_value_competes_as_a_symbol():
    assert greedy_decode(["0.5", "0.5", "0.55"]) == "0.5"
    assert greedy_decode(["0.5", "0.55", "0.55"]) == "0.55"
    assert greedy_decode(["0.5", "0.55"]) == "0.5"  # a tie: the end goes first


@pytest.mark.parametrize(
    ("values", "weights", "match"),
    [([], None, "no values"), (["0.1"], [1, 2], "2 weights for 1 values"),
     (["0.1", "0.2"], [-1, 2], "non-negative"), (["0.1"], [0], "positive sum")],
)
def test_bad_input_is_an_error(values, weights, match):
    with pytest.raises(ValueError, match=match):
        greedy_decode(values, weights)


def test_greedy_by_level_formats_each_target_as_the_rewrite_does():
    targets = pd.DataFrame({"level": [1, 1, 1, 2, 2], "p_acc": [0.375, 0.375, 1.0, 0.125, 0.0]})
    # 0.375 is written "0.38" (two of three at level 1); level 2: "0.12" and "0.00" tie on the
    # tenths digit, and 0 < 1
    assert greedy_by_level(targets) == {1: 0.38, 2: 0.0}
    with pytest.raises(KeyError, match="t.parquet: missing columns \\['p_acc'\\]"):
        greedy_by_level(targets.drop(columns="p_acc"), source="t.parquet")
    with pytest.raises(ValueError, match="row 3: p_acc nan is not in"):
        greedy_by_level(targets.assign(p_acc=[0.5, 0.5, 0.5, float("nan"), 0.0]))


def _scored() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["a", "b", "c", "d"],
        "level": [1, 1, 2, 2],
        "correct": [True, True, False, True],
    })


def test_level_reading_metrics_state_the_level_value_for_every_answer():
    m = level_reading_metrics(_scored(), {1: 1.0, 2: 0.5})
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["mean_confidence"] == pytest.approx(0.75)
    assert m["overconfidence_gap"] == pytest.approx(0.0)
    assert m["ece"] == pytest.approx(0.0)  # each level is its own bin and exact
    m = level_reading_metrics(_scored(), {1: 0.5, 2: 0.5})
    assert m["overconfidence_gap"] == pytest.approx(-0.25)
    assert m["spr"] == pytest.approx(0.0)  # one stated value for all: no ordering


def test_an_answer_at_a_level_without_targets_is_named():
    with pytest.raises(KeyError, match="answer c: level 2 has no training targets"):
        level_reading_metrics(_scored(), {1: 1.0})
    with pytest.raises(KeyError, match="missing columns \\['prompt_id'\\]"):
        level_reading_metrics(_scored().drop(columns="prompt_id"), {1: 1.0, 2: 0.5})


def test_report_reads_a_run_through_its_index(tmp_path, capsys):
    for stage, name, frame in [
        ("targets", "targets.parquet", pd.DataFrame({"level": [1, 1, 2], "p_acc": [1.0, 1.0, 0.5]})),
        ("evaluate", "scored.parquet", _scored()),
    ]:
        (tmp_path / "results" / stage / "k").mkdir(parents=True)
        frame.to_parquet(tmp_path / "results" / stage / "k" / name)
    index = tmp_path / "results" / "index"
    index.mkdir()
    (tmp_path / "results" / "evaluate" / "k" / "metrics.json").write_text(
        json.dumps({"overconfidence_gap": -0.1, "ece": 0.2, "spr": 0.3, "n_bins": 10}))
    (tmp_path / "results" / "evaluate" / "s").mkdir()
    (tmp_path / "results" / "evaluate" / "s" / "metrics.json").write_text(json.dumps({"ece": 0.4, "spr": 0.05}))
    for artifact in ("targets/k", "evaluate/k", "evaluate/s"):
        publish_for_test(tmp_path / "results" / artifact)  # the readers verify the artifact they read
    stages = [{"stage": "targets", "path": "results/targets/k"}, {"stage": "evaluate", "path": "results/evaluate/k"}]
    (index / "caopd.json").write_text(json.dumps({"metrics": "results/evaluate/k/metrics.json", "stages": stages}))
    (index / "sdft.json").write_text(json.dumps({"metrics": "results/evaluate/s/metrics.json", "stages": []}))
    text = report(index)
    assert "+0.000   -0.100   |gap| <= 0.05" in text
    assert "0.000    0.200   <= 0.200" in text  # ECE: no sign  # levels state 1.00 and 0.50: gap exactly 0
    assert "<= 0.200 (0.5 x sdft's)" in text and ">= 0.250 (sdft's + 0.2)" in text
    assert main(["greedy-reading", str(index)]) == 0 and "ideal level-conditional" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no index for variant 'nope'"):
        report(index, variant="nope")
