"""Every script under ``benchmarks/`` runs in a plain install (``pip install -e .``, no dev extras).

A plain install has the package and its dependencies, not pytest and not the ``tests`` folder on
the import path. Two checks: no benchmark imports ``pytest``, ``conftest`` or anything from
``tests`` (read from each script's syntax tree, every import at any depth), and the benchmark that
used to import ``tests/conftest.py`` runs end to end on a tiny model with ``import pytest``
made to fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
FORBIDDEN = {"pytest", "conftest", "tests", "_pytest"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the import statement sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_there_are_benchmarks() -> None:
    assert {p.name for p in BENCHMARKS} >= {"generation_speed.py", "loss_memory_time.py"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_no_test_code(script: Path) -> None:
    assert not imported_modules(script) & FORBIDDEN
    assert '"tests"' not in script.read_text() and "'tests'" not in script.read_text()


def test_generation_speed_runs_without_pytest(tmp_path: Path) -> None:
    script = BENCHMARKS[[p.name for p in BENCHMARKS].index("generation_speed.py")]
    launcher = (
        "import runpy, sys; sys.modules['pytest'] = None; "
        "sys.path = [p for p in sys.path if not p.rstrip('/').endswith('tests')]; "
        f"sys.argv = [{str(script)!r}, '--batch-sizes', '2', '--max-new-tokens', '4', "
        "'--repeats', '1', '--device', 'cpu']; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tokens/s" in done.stdout
