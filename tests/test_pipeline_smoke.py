"""The whole DAG on the CI smoke config (config/smoke.yaml): three variants end to end.

Runs ``snakemake --cores 2`` in a temporary working directory (a few minutes on 2 cores), logging
to a real ``mlflow server`` on localhost (``MLFLOW_TRACKING_URI``, as on a cluster; the default
SQLite store runs in the paper tier), then checks what config/smoke.yaml says it exercises:
exactly its three variants, the index of each, every manifest, the metrics, the sharing of
artifacts between variants, the EMA teacher moving, rewrites with non-zero targets ending in EOS;
one MLflow run per artifact key with its tags and one parent run per variant on the server
(issue 17 row 3); and that a second call, from a moved checkout with another tracking URI, has
nothing to do (issue 13 rows 1 and 7).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caopd.checks import CHECKS
from caopd.store import verify_artifact
from conftest import mlflow_server

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
HEADLINE = ("accuracy", "mean_confidence", "overconfidence_gap", "ece", "brier", "spr", "auroc")


def _snakemake(workdir: Path, *extra: str, root: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--snakefile", str(root / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(root / "config" / "smoke.yaml"), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> str:
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tracking_server) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    done = _snakemake(workdir, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_server})
    if done.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted((workdir / "logs").rglob("*.log"))[-3:])
        pytest.fail(f"snakemake failed:\n{done.stderr[-6000:]}\n--- last logs ---\n{logs}")
    return workdir


@pytest.mark.slow
def test_the_smoke_config_runs_alone(smoke_run):
    """Row 7: a --configfile is the whole config: the smoke run's three variants and no others."""
    assert sorted(p.stem for p in (smoke_run / "results" / "index").glob("*.json")) == ["base", "caopd", "sdft"]
    spec = json.loads(next((smoke_run / "results" / "distill").glob("*/spec.json")).read_text())
    assert spec["params"]["distill"]["teacher"] == "ema"


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
def test_the_tracking_server_holds_one_run_per_key_and_a_parent_per_variant(smoke_run, tracking_server):
    """Issue 17 row 3: every artifact has exactly one run on the server, tagged with its stage,
    key, round and upstream keys, FINISHED, with its files attached; distill runs hold their
    curves; every variant has one parent run, named by the index and its stages' runs."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_server)
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment], max_results=5000)
    by_key: dict[tuple[str, str], list] = {}
    for run in runs:
        if "caopd.key" in run.data.tags:
            by_key.setdefault((run.data.tags["caopd.stage"], run.data.tags["caopd.key"]), []).append(run)
    artifacts = {(p.parent.parent.name, p.parent.name): p.parent
                 for p in (smoke_run / "results").glob("*/*/manifest.json")}
    assert set(by_key) == set(artifacts) and len(artifacts) >= 20
    for (stage, key), found in by_key.items():
        assert len(found) == 1, (stage, key)
        run, spec = found[0], json.loads((artifacts[stage, key] / "spec.json").read_text())
        manifest = json.loads((artifacts[stage, key] / "manifest.json").read_text())
        assert run.info.run_id == manifest["mlflow_run_id"] and run.info.status == "FINISHED"
        assert json.loads(run.data.tags["caopd.upstream"]) == spec["upstream"]
        assert run.data.tags["caopd.round"] == ("" if manifest["round"] is None else str(manifest["round"]))
        attached = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"manifest.json", "spec.json", "tracking.json"} <= attached, (stage, attached)
        if stage == "distill":
            import pyarrow.parquet as pq

            steps = pq.read_table(artifacts[stage, key] / "curves.parquet").column("step").to_pylist()
            history = client.get_metric_history(run.info.run_id, "loss")
            assert sorted(m.step for m in history) == sorted(steps) and steps
    parents = [run for run in runs if "caopd.variant" in run.data.tags]
    assert sorted(run.data.tags["caopd.variant"] for run in parents) == ["base", "caopd", "sdft"]
    for parent in parents:
        variant = parent.data.tags["caopd.variant"]
        index = json.loads((smoke_run / "results" / "index" / f"{variant}.json").read_text())
        assert index["mlflow_run_id"] == parent.info.run_id
        for entry in index["stages"]:
            (child,) = by_key[entry["stage"], entry["key"]]
            tags = client.get_run(child.info.run_id).data.tags
            assert tags[f"caopd.variant.{variant}"] == parent.info.run_id


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


def _stage_paths(run: Path, variant: str, stage: str) -> list[Path]:
    index = json.loads((run / "results" / "index" / f"{variant}.json").read_text())
    return [run / e["path"] for e in index["stages"] if e["stage"] == stage]


@pytest.mark.slow
def test_caopd_rewrites_carry_nonzero_targets_and_end_in_eos(smoke_run):
    """Row 7: the warm-up answers sometimes, so P_acc > 0 somewhere and the rewrite writes it."""
    import pandas as pd
    from transformers import AutoTokenizer

    (base,) = _stage_paths(smoke_run, "caopd", "base_model")
    tok = AutoTokenizer.from_pretrained(base / "model")
    rows = pd.concat([pd.read_parquet(p / "examples.parquet") for p in _stage_paths(smoke_run, "caopd", "rewrite")])
    assert (rows["p_acc"] > 0).any(), "no rollout of either round was right: the rewrite only wrote 0.00"
    for ids, start, p_acc in zip(rows["student_input_ids"], rows["student_prompt_len"], rows["p_acc"]):
        ids = [int(i) for i in ids]
        assert ids[-1] == tok.eos_token_id
        text = tok.decode(ids[start:], skip_special_tokens=True)
        assert text.endswith(f"Confidence: {p_acc:.2f}") and text.count("Confidence:") >= 1


@pytest.mark.slow
def test_the_ema_teacher_moves_every_round(smoke_run):
    """Row 7: with the EMA teacher, each round's teacher differs from the model it started from
    (a frozen teacher would equal the base model) and from the student."""
    import torch
    from safetensors.torch import load_file

    def weights(directory: Path) -> dict:
        return load_file(next(directory.glob("*.safetensors")))

    (base,) = _stage_paths(smoke_run, "caopd", "base_model")
    previous_teacher = weights(base / "model")
    for distill in _stage_paths(smoke_run, "caopd", "distill"):
        teacher, student = weights(distill / "teacher"), weights(distill / "student")
        assert any(not torch.equal(teacher[k], previous_teacher[k]) for k in teacher), distill
        assert any(not torch.equal(teacher[k], student[k]) for k in teacher), distill
        previous_teacher = teacher


@pytest.mark.slow
def test_figures_and_comparison_exist(smoke_run):
    table = (smoke_run / "results" / "compare" / "metrics.tsv").read_text().splitlines()
    assert table[0].startswith("variant\t") and len(table) == 4
    for name in ("accuracy_vs_confidence.png", "accuracy_vs_ece.png"):
        assert (smoke_run / "results" / "compare" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checks = (smoke_run / "results" / "compare" / "checks.txt").read_text().splitlines()
    assert [line.split()[1] for line in checks] == list(CHECKS), checks  # PASS or FAIL: one draw
    plots = list((smoke_run / "results" / "plots").glob("*/reliability.png"))
    assert len(plots) == 3


@pytest.mark.slow
def test_a_second_call_has_nothing_to_do(smoke_run):
    done = _snakemake(smoke_run, "-n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr


@pytest.mark.slow
def test_a_moved_checkout_and_another_tracking_uri_plan_nothing(smoke_run, tmp_path):
    """Row 1: a copy of the finished run (cp -a) driven from a fresh copy of the checkout (new
    mtimes, as a clone has) with another MLFLOW_TRACKING_URI plans 0 jobs, and runs none."""
    checkout = tmp_path / "checkout"
    for name in ("Snakefile", "caopd", "workflow", "config", "profiles"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, copy_function=shutil.copy,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            checkout.mkdir(exist_ok=True)
            shutil.copy(source, checkout / name)
    run = tmp_path / "run2"
    shutil.copytree(smoke_run, run, symlinks=True)  # copy2: mtimes kept, as cp -a
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}",
           "PYTHONPATH": str(checkout)}
    done = _snakemake(run, "-n", root=checkout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    done = _snakemake(run, root=checkout, env=env)
    assert done.returncode == 0 and "Nothing to be done" in done.stdout + done.stderr
    assert not (tmp_path / "elsewhere").exists()  # nothing ran, nothing was logged
