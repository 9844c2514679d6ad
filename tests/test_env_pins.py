"""The conda environments of ``envs/`` stay pinned to what the suite runs with (issue 17 row 4).

conda cannot run where the suite runs, so ``--sdm conda`` is never exercised; instead every pin
of every ``envs/*.yaml`` (``python=X.Y``, ``pip=V`` and each ``pip:`` entry ``name==V``) is
compared with the interpreter and the installed distributions. A mismatch names the file, the
package and both versions: update the pin (or the venv) so the two agree.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

ENVS = sorted((Path(__file__).resolve().parent.parent / "envs").glob("*.yaml"))


def pins(path: Path) -> dict[str, str]:
    """``{package: pinned version}`` of a conda environment file (``python`` included).

    Raises:
        ValueError: an entry that is not pinned to one version.
    """
    pinned: dict[str, str] = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        items = entry["pip"] if isinstance(entry, dict) else [entry]
        separator = "==" if isinstance(entry, dict) else "="
        for item in items:
            name, sep, version = item.partition(separator)
            if not sep or not re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version):
                raise ValueError(f"{path.name}: {item!r} is not pinned to one version ({separator})")
            pinned[name.strip()] = version.strip()
    return pinned


def test_there_are_environments_to_check():
    assert [p.name for p in ENVS] == ["caopd.yaml", "plot.yaml"]


@pytest.mark.parametrize("path", ENVS, ids=[p.name for p in ENVS])
def test_every_pin_is_the_installed_version(path: Path):
    pinned = pins(path)
    assert "python" in pinned and len(pinned) > 3
    wrong = []
    for name, version in pinned.items():
        if name == "python":
            installed = ".".join(map(str, sys.version_info[: len(version.split("."))]))
        else:
            installed = importlib.metadata.version(name)
        if installed != version:
            wrong.append(f"{name}: pinned {version}, installed {installed}")
    assert not wrong, f"{path.name}: " + "; ".join(wrong)


def test_an_unpinned_entry_is_refused(tmp_path: Path):
    env = tmp_path / "env.yaml"
    env.write_text("dependencies:\n  - python=3.11\n  - pip:\n      - torch>=2.4\n")
    with pytest.raises(ValueError, match="torch>=2.4"):
        pins(env)
