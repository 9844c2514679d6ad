"""The whole DAG on the CI smoke config (config/smoke.yaml): three variants end to end.

Runs ``snakemake --cores 2`` in a temporary working directory (a few minutes on 2 cores), then
checks the index of every variant, every manifest, the metrics, the sharing of artifacts between
variants, and that a second call has nothing to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caopd.store import verify_artifact

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
HEADLINE = ("accuracy", "mean_confidence", "overconfidence_gap", "ece", "brier", "spr", "auroc")


def _snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "config" / "smoke.yaml"), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    done = _snakemake(workdir)
    if done.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted((workdir / "logs").rglob("*.log"))[-3:])
        pytest.fail(f"snakemake failed:\n{done.stderr[-6000:]}\n--- last logs ---\n{logs}")
    return workdir


@pytest.mark.slow
def test_every_variant_is_indexed_and_verifies(smoke_run):
    for variant in ("base", "sdft", "caopd"):
        index = json.loads((smoke_run / "results" / "index" / f"{variant}.json").read_text())
        assert index["variant"] == variant
        assert index["mlflow_run_id"]
        stages = [entry["stage"] for entry in index["stages"]]
        assert stages[:2] == ["prepare_data", "base_model"] and stages[-3:] == ["eval_rollouts", "evaluate", "plots"]
        if variant != "base":  # two rounds in the smoke config
            assert [e["round"] for e in index["stages"] if e["stage"] == "distill"] == [1, 2]
        for entry in index["stages"]:
            manifest = verify_artifact(smoke_run / entry["path"])
            assert manifest["key"] == entry["key"]
            assert manifest["mlflow_run_id"] == entry["mlflow_run_id"]
        metrics = json.loads((smoke_run / index["metrics"]).read_text())
        assert metrics["n"] == 40
        for name in HEADLINE:
            assert name in metrics and name in metrics["ci95"]
        assert "valid_confidence_only" in metrics and len(metrics["bins"]) == 10
        # greedy: every answer whose confidence parsed has a label, hence an expected confidence
        expected = metrics["expected_confidence"]
        assert round(metrics["format_adherence"] * 40) <= expected["n"] <= 40
        if expected["n"]:
            assert 0.0 <= expected["mean_confidence"] <= 1.0


@pytest.mark.slow
def test_sdft_and_caopd_share_the_round_one_prefix(smoke_run):
    def keys(variant):
        index = json.loads((smoke_run / "results" / "index" / f"{variant}.json").read_text())
        return {(e["stage"], e["round"]): e["key"] for e in index["stages"]}

    sdft, caopd = keys("sdft"), keys("caopd")
    for shared in [("prepare_data", None), ("base_model", None), ("rollouts", 1), ("targets", 1)]:
        assert sdft[shared] == caopd[shared]
    for own in [("rewrite", 1), ("distill", 1), ("rollouts", 2), ("evaluate", None)]:
        assert sdft[own] != caopd[own]
    assert len(list((smoke_run / "results" / "rollouts").iterdir())) == 3  # r1 shared, r2 per variant


@pytest.mark.slow
def test_rewrite_examples_differ_as_designed(smoke_run):
    import pandas as pd

    def examples(variant):
        index = json.loads((smoke_run / "results" / "index" / f"{variant}.json").read_text())
        path = next(e["path"] for e in index["stages"] if e["stage"] == "rewrite" and e["round"] == 1)
        return pd.read_parquet(smoke_run / path / "examples.parquet")

    sdft, caopd = examples("sdft"), examples("caopd")
    assert len(sdft) == len(caopd) == 12 * 4  # round 1: half the 24 prompts, K=4
    assert not sdft["rewritten"].any() and caopd["rewritten"].all()


@pytest.mark.slow
def test_figures_and_comparison_exist(smoke_run):
    table = (smoke_run / "results" / "compare" / "metrics.tsv").read_text().splitlines()
    assert table[0].startswith("variant\t") and len(table) == 4
    for name in ("accuracy_vs_confidence.png", "accuracy_vs_ece.png"):
        assert (smoke_run / "results" / "compare" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plots = list((smoke_run / "results" / "plots").glob("*/reliability.png"))
    assert len(plots) == 3


@pytest.mark.slow
def test_a_second_call_has_nothing_to_do(smoke_run):
    done = _snakemake(smoke_run, "-n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr
