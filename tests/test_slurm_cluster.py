"""A DAG with every rule through the shipped SLURM profile on a real single-node SLURM (issue 17
row 2).

The test starts a private cluster with ``../shared/slurm/start-slurm.sh`` (munged, slurmctld,
slurmd; one node declared as 8 CPUs, 256 GB and 2 fake GPUs, partitions ``cpu`` and ``gpu``),
installing ``slurm-wlm munge`` with apt-get when they are missing, runs
``snakemake --workflow-profile workflow/profiles/slurm`` on config/smoke.yaml cut to one round and
two variants, ``base`` and ``caopd`` with teacher-sampled prefixes (so ``teacher_rollouts`` runs
too: every rule of the workflow, one job each where the DAG allows), checks the artifacts and,
with ``scontrol show job``, the partition, GPUs, CPUs and time limit of every job against the
rule's threads and resources and the profile, and always stops the cluster. Each job waits on
the scheduler and the plugin's polling, so the DAG is kept short: the two-round smoke DAG itself
is tests/test_pipeline_smoke.py's.

Skipped when not root (the daemons and /etc/slurm need it), when a real SLURM already answers on
this machine (never restarted), or without ``../shared/slurm``. Without slurmdbd the plugin polls
``squeue`` (``--slurm-status-command squeue``); finished jobs stay visible to ``scontrol`` for an
hour (``SLURM_TEST_MIN_JOB_AGE``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from caopd.resources import distill_threads
from caopd.store import verify_artifact

ROOT = Path(__file__).resolve().parent.parent
SLURM_SCRIPTS = ROOT.parent / "shared" / "slurm"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CLUSTER_ENV = {
    "SLURM_TEST_CPUS": "8", "SLURM_TEST_MEM_MB": "262144", "SLURM_TEST_GPUS": "2",
    "SLURM_TEST_PARTITION": "cpu", "SLURM_TEST_EXTRA_PARTITIONS": "gpu", "SLURM_TEST_MIN_JOB_AGE": "3600",
}
#: rule -> (partition, GPUs, CPUs) the smoke config's jobs must ask for (distill: 1 process; the
#: schema's default threads)
EXPECTED = {
    "prepare_data": ("cpu", 0, 1), "base_model": ("cpu", 0, 8), "rollouts": ("gpu", 1, 8),
    "teacher_rollouts": ("gpu", 1, 8),
    "targets": ("cpu", 0, 1), "rewrite": ("cpu", 0, 1), "distill": ("gpu", 1, distill_threads(1, 8)),
    "eval_rollouts": ("gpu", 1, 8), "evaluate": ("cpu", 0, 1), "plots": ("cpu", 0, 1), "compare": ("cpu", 0, 1),
}

pytestmark = pytest.mark.slow


def _answers() -> bool:
    """Whether a SLURM controller answers on this machine now."""
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode == 0


def _install_slurm() -> None:
    """``apt-get install -y slurm-wlm munge`` (after ``apt-get update`` if the first try fails)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("starting a private SLURM needs root")
    if not (SLURM_SCRIPTS / "start-slurm.sh").is_file():
        pytest.skip(f"{SLURM_SCRIPTS} is missing")
    if _answers():
        pytest.skip("a SLURM controller already answers on this machine; it is never restarted")
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        _install_slurm()
    env = dict(os.environ, SLURM_TEST_DIR=str(tmp_path_factory.mktemp("slurm") / "cluster"), **CLUSTER_ENV)
    try:
        started = subprocess.run(["bash", str(SLURM_SCRIPTS / "start-slurm.sh")], env=env,
                                 capture_output=True, text=True)
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-slurm.sh")], env=env, capture_output=True)


def profile_settings() -> dict:
    """The shipped profile as Snakemake reads it (YTE-rendered, no CAOPD_SLURM_* set)."""
    import yte

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CAOPD_SLURM_")}
    try:
        with open(PROFILE / "config.yaml") as fh:
            return yte.process_yaml(fh, require_use_yte=True)
    finally:
        os.environ.update(saved)


def cluster_config(directory: Path) -> Path:
    """config/smoke.yaml cut to one round, ``base`` and ``caopd`` with teacher-sampled prefixes."""
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["distill"]["rounds"] = 1
    config["variants"] = {"base": {"distill": {"rounds": 0}}, "caopd": {"rollouts": {"prefix_source": "teacher"}}}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm_smoke")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAOPD_SLURM_", "MLFLOW_TRACKING_URI"))}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cluster_config(workdir)), "--workflow-profile", str(PROFILE),
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    (workdir / "snakemake.out").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return workdir


def scontrol_jobs() -> list[dict[str, str]]:
    """Every job the controller still knows, as ``scontrol show job -o`` fields."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def minutes(limit: str) -> int:
    """A SLURM time limit (``[D-]HH:MM:SS``) in minutes."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 1440 + h * 60 + m + (s > 0)


def test_every_rule_runs_through_slurm(slurm_run):
    for variant in ("base", "caopd"):
        index = json.loads((slurm_run / "results" / "index" / f"{variant}.json").read_text())
        for entry in index["stages"]:
            assert verify_artifact(slurm_run / entry["path"])["key"] == entry["key"]
    assert (slurm_run / "results" / "compare" / "metrics.tsv").read_text().startswith("variant\t")


def test_every_job_asks_for_its_partition_gpus_cpus_and_time(slurm_run):
    settings = profile_settings()
    default = settings["default-resources"]
    assert "slurm_account" not in default and "cpus_per_task" not in default and "use-conda" not in settings
    jobs = [job for job in scontrol_jobs() if job.get("WorkDir") == str(slurm_run)]
    # kept beside the run for a reader (the closing note quotes a GPU job's lines)
    (slurm_run / "scontrol_jobs.txt").write_text(
        "\n".join(" ".join(f"{k}={job.get(k, '')}" for k in ("JobId", "Comment", "JobState", "Partition",
                                                            "NumCPUs", "TresPerJob", "TimeLimit", "RunTime"))
                  for job in jobs) + "\n")
    seen: dict[str, int] = {}
    for job in jobs:
        rule = re.fullmatch(r"rule_(\w+?)_wildcards_.*|rule_(\w+)", job["Comment"])
        rule = rule.group(1) or rule.group(2)
        partition, gpus, cpus = EXPECTED[rule]
        runtime = settings["set-resources"].get(rule, {}).get("runtime", default["runtime"])
        where = f"job {job['JobId']} ({rule})"
        assert job["JobState"] == "COMPLETED", where
        assert job["Partition"] == partition, where
        assert int(job["NumCPUs"]) == cpus, where
        assert re.findall(r"gres:gpu:(\d+)", job.get("TresPerJob", "")) == ([str(gpus)] if gpus else []), where
        assert minutes(job["TimeLimit"]) == runtime, where
        seen[rule] = seen.get(rule, 0) + 1
    # one round of caopd (its P_acc from the student's rollouts, its prefixes from the teacher's),
    # both variants evaluated
    assert seen == {"prepare_data": 1, "base_model": 1, "rollouts": 1, "teacher_rollouts": 1, "targets": 1,
                    "rewrite": 1, "distill": 1, "eval_rollouts": 2, "evaluate": 2, "plots": 2, "compare": 1}, seen
