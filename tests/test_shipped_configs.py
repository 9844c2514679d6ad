"""Every config file the repository ships is valid: a fast test per file, nothing run.

- a full config (``config/config.yaml``, ``config/smoke.yaml``) resolves alone, as
  ``snakemake --configfile FILE`` reads it;
- an overlay (``config/sampled.yaml``, ``config/tuning.yaml``: their header says to run them after
  ``config/config.yaml``) resolves merged onto the default, as ``--configfile config/config.yaml
  FILE`` merges them;
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
OVERLAYS = ("sampled.yaml", "tuning.yaml")


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
    assert sorted(p.name for p in CONFIG.glob("*.yaml")) == sorted(FULL + OVERLAYS)
