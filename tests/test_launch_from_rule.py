"""The distill rule launches its own processes (issue 15 row 3, DESIGN §10), and every GPU rule
asks for the GPUs its config needs (issue 17 row 1).

- ``snakemake`` on a tiny config with ``distill.processes: 2`` and the gloo CPU accelerate file
  trains through ``accelerate launch``; the same key rerun with one process gives the same loss,
  divergence and entropy at every step (1e-4 relative), the same gradient norms (1e-3: after step
  1 they are taken at weights that already differ in the last bits) and the same weights (1e-4);
  both artifacts publish and verify, and the launched run's MLflow record holds its curves;
- ``snakemake -n`` of an 8-GPU layout shows the jobs' threads and GPUs computed from the config;
- the process count is not part of the key; an accelerate file that cannot run the processes is
  refused at load.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from caopd.config import ConfigError, resolve
from caopd.plan import build_plan
from caopd.store import verify_artifact
from test_distill_ddp import CURVE_TOL

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "seed": 0,
    "task": {"name": "arith", "sizes": {"train": 8, "val": 0, "eval": 8}},
    "model": {"source": "tiny", "tiny": {
        "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
        "num_kv_heads": 2, "max_positions": 256,
        "warmup": {"steps": 0, "examples": 50, "induction_steps": 0, "induction_max_steps": 0, "induction_lr_warmup": 0,
                   "induction_stop_loss": None}}},
    "rollouts": {"k": 2, "max_new_tokens": 8, "batch_size": 16},
    "rewrite": {"max_completion_length": 16},
    "distill": {"rounds": 1, "epochs": 1, "batch_size": 4, "grad_accum": 2, "lr": 1.0e-3,
                "checkpoint_every": 1, "processes": 2, "accelerate_config": "config/accelerate/cpu_ddp.yaml"},
    "evaluation": {"max_new_tokens": 8, "bootstrap": 0},
    "tracking": {"experiment": "launch"},
    "variants": {"caopd": {}},
}


def _with(base: dict, **distill) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["distill"].update(distill)
    return cfg


def _distill_key(cfg: dict) -> str:
    (spec,) = [s for s in build_plan(resolve(cfg), ROOT).variants["caopd"].stages if s.stage == "distill"]
    return spec.key


def _snakemake(workdir: Path, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def test_the_process_count_and_accelerate_file_are_not_part_of_the_key():
    assert _distill_key(TINY) == _distill_key(_with(TINY, processes=1, accelerate_config="config/accelerate/ddp.yaml"))
    assert _distill_key(TINY) != _distill_key(_with(TINY, lr=2.0e-3))


def test_variants_sharing_a_distill_artifact_must_share_its_layout():
    cfg = _with(TINY)
    cfg["variants"] = {"caopd": {}, "caopd8": {"distill": {"processes": 8}}}
    with pytest.raises(ValueError, match="share the artifact results/distill/.*distill.processes"):
        build_plan(resolve(cfg), ROOT)


@pytest.mark.parametrize(
    ("distill", "needle"),
    [
        ({"accelerate_config": "config/accelerate/nope.yaml"}, "nope.yaml does not exist"),
        ({"accelerate_config": str(ROOT / "tests" / "data" / "accelerate_fsdp1.yaml")}, "distributed_type FSDP"),
        ({"processes": 0}, "'distill.processes'"),
    ],
)
def test_an_accelerate_file_that_cannot_run_the_processes_is_refused_at_load(distill, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(_with(TINY, **distill))


def _dry_run_jobs(output: str) -> list[dict]:
    """The jobs of a ``snakemake -n`` listing: rule, threads and resources."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", output)[1:]:
        rule = re.match(r"rule (\w+):", block).group(1)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        pairs = dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {}
        jobs.append({"rule": rule, "threads": int(threads.group(1)) if threads else 1, **pairs})
    return jobs


@pytest.mark.parametrize(
    ("distill", "rollouts", "threads", "want"),
    [
        ({"processes": 8, "accelerate_config": "config/accelerate/ddp.yaml"},
         {"engine": "vllm", "tensor_parallel_size": 4, "prefix_source": "teacher"}, {},
         {"distill": ("8", 64), "rollouts": ("4", 8), "teacher_rollouts": ("4", 8), "eval_rollouts": ("1", 8),
          "base_model": (None, 8)}),
        ({}, {}, {}, {"distill": ("0", 16), "rollouts": ("1", 8), "eval_rollouts": ("1", 8)}),
        ({}, {}, {"base_model": 4, "rollouts": 1, "distill": 3, "eval_rollouts": 2},
         {"distill": ("0", 6), "rollouts": ("1", 1), "eval_rollouts": ("1", 2), "base_model": (None, 4)}),
    ],
    ids=["8-gpu-ddp-and-vllm-tp4", "2-cpu-processes", "threads-from-the-config"],
)
def test_the_jobs_ask_for_the_gpus_and_threads_their_config_needs(tmp_path, distill, rollouts, threads, want):
    cfg = _with(TINY, **distill)
    cfg["rollouts"].update(rollouts)
    if threads:
        cfg["threads"] = threads
    done = _snakemake(tmp_path, cfg, "-n", "--cores", "256")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = _dry_run_jobs(done.stdout + done.stderr)
    assert {job["rule"] for job in jobs} >= set(want) | {"base_model", "targets"}
    for job in jobs:
        gpus, cpus = want.get(job["rule"], (None, job["threads"]))
        assert job.get("gpu") == gpus and job["threads"] == cpus, job
        if job["rule"] == "distill":
            assert int(job["processes"]) == cfg["distill"]["processes"]
            assert job["threads"] == threads.get("distill", 8) * int(job["processes"])


@pytest.mark.slow
def test_two_gloo_processes_launched_by_the_rule_match_one_process(tmp_path):
    work = tmp_path / "run"
    key = _distill_key(TINY)
    done = _snakemake(work, TINY, "--cores", "2", "--until", "distill")
    assert done.returncode == 0, done.stderr[-6000:]
    artifact = work / "results" / "distill" / key
    manifest = verify_artifact(artifact)
    assert manifest["result"]["world_size"] == 2 and manifest["result"]["steps"] == 2
    assert "launching 2 processes" in (work / "logs" / "distill" / f"{key}.log").read_text()
    record = json.loads((artifact / "tracking.json").read_text())
    curves = pq.read_table(artifact / "curves.parquet").to_pylist()
    assert sorted(m["step"] for m in record["metrics"] if m["name"] == "loss") == [r["step"] for r in curves]
    assert not (work / "results" / ".work" / "distill" / key).exists()
    launched = tmp_path / "launched"
    shutil.move(artifact, launched)

    done = _snakemake(work, _with(TINY, processes=1), "--cores", "2", "--until", "distill")
    assert done.returncode == 0, done.stderr[-6000:]
    assert verify_artifact(artifact)["result"]["world_size"] == 1
    one = pq.read_table(artifact / "curves.parquet").to_pylist()
    two = pq.read_table(launched / "curves.parquet").to_pylist()
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(two, one):
        for name in ("loss", "divergence", "entropy", "mean_p_acc"):
            assert a[name] == pytest.approx(b[name], **CURVE_TOL), (a["step"], name)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), a["step"]
    start = load_file(next((work / "results" / "base_model").glob("*/model/model.safetensors")))
    weights_two, weights_one = (load_file(d / "student" / "model.safetensors") for d in (launched, artifact))
    assert any(not torch.equal(start[k], weights_one[k]) for k in start)
    for name in start:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-4, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")
