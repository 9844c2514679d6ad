"""The embedded default and the paper's finding: the default pipeline, end to end, checked
against the five checks of :mod:`caopd.evaluation.claims` (issue 5).

Runs ``snakemake --cores 2`` with ``config/config.yaml`` unchanged in a temporary working
directory (about 7 minutes on 2 CPU cores), then one test per check. The same checks for a run of
your own::

    python -m caopd.evaluation.claims results/index

Checks the default does not meet yet are marked ``xfail`` with the measured figures; they are
still computed and reported, and the reasons are in the README's results section.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from caopd.evaluation.claims import metrics_from_index, paper_checks

ROOT = Path(__file__).resolve().parent.parent

KNOWN_SHORTFALLS = {
    "caopd_calibrated": "greedy answers beat the temperature-1 success rate the confidence is "
    "trained toward, so greedy CaOPD is underconfident (seed 0: gap -0.103); README, Results",
    "capability_kept": "distillation does not add capability to the tiny model and what it costs "
    "varies with the draws (seed 0: caopd 0.484, sdft 0.558, base 0.538); README, Results",
}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("default")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(ROOT / "config" / "config.yaml"),
           "--cores", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    if done.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted((workdir / "logs").rglob("*.log"))[-3:])
        pytest.fail(f"snakemake failed:\n{done.stderr[-6000:]}\n--- last logs ---\n{logs}")
    metrics = metrics_from_index(workdir / "results" / "index")
    return {"metrics": metrics, "checks": {c.name: c for c in paper_checks(metrics)}}


@pytest.mark.slow
def test_default_evaluates_at_least_500_questions(default_run):
    for variant, m in default_run["metrics"].items():
        assert m["n"] >= 500 and m["split"] == "eval", f"{variant}: {m['n']} questions of {m['split']}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "check",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_SHORTFALLS[name], strict=False))
        if name in KNOWN_SHORTFALLS else name
        for name in ("sdft_overconfident", "caopd_calibrated", "ece_halved", "confidence_informative",
                     "capability_kept")
    ],
)
def test_paper_check(default_run, check):
    result = default_run["checks"][check]
    assert result.passed, f"{check}: {result.detail}"
