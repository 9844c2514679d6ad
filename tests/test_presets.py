"""The paper presets (config/presets/): each resolves with the paper's settings, and
``snakemake -n`` lists its whole DAG with the model pointing at a local directory of Qwen3-8B's
architecture (config.json only: a dry run and the memory check read no weights) and the data
paths at the released eval rows of ../shared/data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from caopd.config import deep_merge, resolve
from caopd.resources import stage_launch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
PRESETS = {"qwen3_8b_science.yaml": "science_eval", "qwen3_8b_tooluse.yaml": "tooluse_eval"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_has_the_papers_settings(name):
    variants = resolve(yaml.safe_load((ROOT / "config" / "presets" / name).read_text()), check_disk=False)["variants"]
    assert {"base", "sdft", "caopd", "sdft_reverse_kl", "caopd_reverse_kl"} <= set(variants)
    cfg = variants["caopd"]
    r, d, e = cfg["rollouts"], cfg["distill"], cfg["evaluation"]
    assert (r["k"], r["temperature"], r["top_p"], r["max_new_tokens"]) == (8, 1.0, 1.0, 1024)
    assert cfg["rewrite"]["max_prompt_length"] == 1024 and cfg["rewrite"]["calibration"]
    assert (d["lr"], d["warmup_ratio"], d["epochs"], d["teacher"], d["ema_weight"]) == (2e-5, 0.1, 1, "ema", 0.01)
    assert d["batch_size"] * d["grad_accum"] == 4 * 8 and d["skip_first_tokens"] == 3
    assert (d["divergence"], variants["caopd_reverse_kl"]["distill"]["divergence"]) == ("forward_kl", "reverse_kl")
    assert (d["processes"], d["sharding"], d["gradient_checkpointing"]) == (8, "fsdp2", True)
    assert e["greedy"] and e["engine"] == "vllm" and r["engine"] == "vllm"
    assert stage_launch("distill", cfg)["gpus"] == 8 and stage_launch("eval_rollouts", cfg)["gpus"] == 1


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is missing")
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_dry_runs_its_whole_dag(name, qwen3_8b_shape_dir, tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "presets" / name).read_text())
    rows = str(SHARED / PRESETS[name])
    cfg = deep_merge(raw, {"model": {"source": str(qwen3_8b_shape_dir)}, "task": {"paths": {"train": rows, "eval": rows}}})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(path), "--cores", "1", "--quiet", "rules"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    listed = done.stdout + done.stderr
    for rule in ("prepare_data", "base_model", "rollouts", "targets", "rewrite", "distill", "eval_rollouts",
                 "evaluate", "plots", "compare", "index"):
        assert rule in listed, rule
    counts = {line.split()[0]: int(line.split()[1]) for line in listed.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["distill"] == 4 * 4, listed[-2000:]       # 4 rounds of each of 4 training variants
    assert counts["eval_rollouts"] == 5                      # base and the 4 trained variants
