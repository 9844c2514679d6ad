"""Every config file the repository ships is valid: a fast test per file, nothing run.

- a full config (``config/config.yaml``, ``config/smoke.yaml``) resolves alone, as
  ``snakemake --configfile FILE`` reads it;
- an overlay (``config/sampled.yaml``, ``config/tuning.yaml``, ``config/ablations/*.yaml``: their
  header says to run them after ``config/config.yaml``) resolves merged onto the default, as
  ``--configfile config/config.yaml FILE`` merges them;
- an accelerate file (``config/accelerate/*.yaml``) is a mapping with a ``distributed_type`` (which
  ones the distill loop can run is checked at load: :func:`caopd.resources.accelerate_problem`).

A new ``config/*.yaml`` must be listed here as one or the other: the last test fails otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caopd.config import deep_merge, resolve
from caopd.resources import read_accelerate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
FULL = ("config.yaml", "smoke.yaml")
OVERLAYS = ("sampled.yaml", "tuning.yaml", "ablations/kl_trajectory.yaml")


def _read(name: str) -> dict:
    return yaml.safe_load((CONFIG / name).read_text())


@pytest.mark.parametrize("name", FULL)
def test_a_full_config_resolves_alone(name):
    resolved = resolve(_read(name))
    assert resolved["variants"], f"config/{name} defines no variant"


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_overlay_resolves_on_the_default(name):
    overlay = _read(name)
    resolved = resolve(deep_merge(_read("config.yaml"), overlay))
    assert set(overlay.get("variants", {})) <= set(resolved["variants"])


@pytest.mark.parametrize("path", sorted((CONFIG / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_an_accelerate_file_names_its_distribution(path):
    settings = read_accelerate_config(path)
    assert "distributed_type" in settings, f"{path}: no distributed_type"


def test_every_shipped_config_is_covered():
    shipped = [*CONFIG.glob("*.yaml"), *CONFIG.glob("ablations/*.yaml")]
    assert sorted(str(p.relative_to(CONFIG)) for p in shipped) == sorted(FULL + OVERLAYS)


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

    resolved = resolve(deep_merge(_read("config.yaml"), _read("ablations/kl_trajectory.yaml")))
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
