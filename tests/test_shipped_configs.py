"""Every config file the repository ships is valid: a fast test per file, found by globbing,
nothing run.

- a workflow config (every ``config/**/*.yaml`` but ``config/accelerate/``) resolves as its header
  comment says to run it: the files after the first ``--configfile`` of the header, merged in that
  order as ``snakemake --configfile A B`` merges them (``config/sampled.yaml`` and
  ``config/tuning.yaml`` onto ``config/config.yaml``); a file whose header names no
  ``--configfile`` (``config/config.yaml``, which the Snakefile loads without one) resolves alone.
  The header must name the file itself, so a stale usage line fails here. Local sources are
  checked on disk for the files directly under ``config/``; a preset (``config/presets/``) names
  Qwen3-8B in the local Hugging Face cache and the paper's data, which a test machine lacks, so it
  is resolved without that check (``tests/test_presets.py`` dry-runs it against local stand-ins);
- an accelerate file (``config/accelerate/*.yaml``) is a mapping with a ``distributed_type`` (which
  ones the distill loop can run is checked at load: :func:`caopd.resources.accelerate_problem`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caopd.config import deep_merge, resolve
from caopd.resources import read_accelerate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
ACCELERATE = CONFIG / "accelerate"
WORKFLOW_CONFIGS = sorted(p for p in CONFIG.rglob("*.y*ml") if ACCELERATE not in p.parents)


def header_configfiles(path: Path) -> list[Path]:
    """The files after the first ``--configfile`` of ``path``'s leading comment block, up to the
    next option or the end of the line; ``[]`` when the header has none."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").split()
        if "--configfile" in words:
            files = []
            for word in words[words.index("--configfile") + 1:]:
                if word.startswith("-") or word == "\\":
                    break
                files.append(ROOT / word)
            return files
    return []


def _ids(path: Path) -> str:
    return path.relative_to(CONFIG).as_posix()


def test_the_glob_finds_the_shipped_configs():
    found = {_ids(p) for p in WORKFLOW_CONFIGS}
    assert {"config.yaml", "smoke.yaml", "sampled.yaml", "tuning.yaml"} <= found
    assert any(name.startswith("presets/") for name in found)


@pytest.mark.parametrize("path", WORKFLOW_CONFIGS, ids=_ids)
def test_a_workflow_config_resolves_as_its_header_runs_it(path):
    files = header_configfiles(path) or [path]
    assert path in files, f"{path}: its header runs {[_ids(f) for f in files]}, not this file"
    merged: dict = {}
    for file in files:
        merged = deep_merge(merged, yaml.safe_load(file.read_text()))
    resolved = resolve(merged, check_disk=path.parent == CONFIG)
    own = yaml.safe_load(path.read_text()).get("variants") or {}
    assert resolved["variants"], f"{path} defines no variant"
    assert set(own) <= set(resolved["variants"])


@pytest.mark.parametrize("path", sorted(ACCELERATE.glob("*.yaml")), ids=lambda p: p.name)
def test_an_accelerate_file_names_its_distribution(path):
    settings = read_accelerate_config(path)
    assert "distributed_type" in settings, f"{path}: no distributed_type"


#: config/ablations/kl_trajectory.yaml: variant -> (prefix source, divergence, calibration)
KL_TRAJECTORY = {
    f"{quadrant}_{cal}": (prefix, divergence, cal == "caopd")
    for quadrant, prefix, divergence in (
        ("sft", "teacher", "forward_kl"), ("dagger", "student", "forward_kl"),
        ("offline_rl", "teacher", "reverse_kl"), ("opd", "student", "reverse_kl"),
        ("kl_mix", "student", "kl_mix"),
    )
    for cal in ("caopd", "plain")
}


def test_the_kl_trajectory_grid_has_its_ten_variants_and_shares_what_it_can():
    from collections import Counter

    from caopd.plan import build_plan

    resolved = resolve(deep_merge(*(yaml.safe_load((CONFIG / name).read_text()) for name in ("config.yaml", "ablations/kl_trajectory.yaml"))))
    variants = resolved["variants"]
    got = {
        name: (cfg["rollouts"]["prefix_source"], cfg["distill"]["divergence"], cfg["rewrite"]["calibration"])
        for name, cfg in variants.items() if name in KL_TRAJECTORY
    }
    assert got == KL_TRAJECTORY
    assert {variants[f"kl_mix_{c}"]["distill"]["kl_mix_lambda"] for c in ("caopd", "plain")} == {0.5}
    plan = build_plan(resolved, ROOT)
    jobs = Counter(stage for stage, _ in plan.by_key)
    # one student sampling for all; teacher samples with and without calibration; student and
    # teacher examples with and without; the ten objectives (dagger_* are caopd / sdft) and base
    assert jobs == {"prepare_data": 1, "base_model": 1, "rollouts": 1, "targets": 1, "teacher_rollouts": 2,
                    "rewrite": 4, "distill": 10, "eval_rollouts": 11, "evaluate": 11, "plots": 11}
    keys = {name: {s.stage: s.key for s in vplan.stages} for name, vplan in plan.variants.items()}
    assert keys["dagger_caopd"] == keys["caopd"] and keys["dagger_plain"] == keys["sdft"]
    assert keys["sft_caopd"]["teacher_rollouts"] == keys["offline_rl_caopd"]["teacher_rollouts"]
