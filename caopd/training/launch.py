"""Command-line entry of the distill stage, what ``accelerate launch`` runs, and the launcher.

One process (CPU or one GPU)::

    python -m caopd.training.launch --job JOB.json

Data parallel (every process runs the same loop on its share of each batch)::

    accelerate launch --config_file config/accelerate/ddp.yaml -m caopd.training.launch --job JOB.json
    accelerate launch --config_file config/accelerate/cpu_ddp.yaml --main_process_port 29517 \\
        -m caopd.training.launch --job JOB.json          # 2 CPU processes, gloo (how it is tested)

The distill rule does the second itself when ``distill.processes`` > 1 (:func:`launch_distill`).

``JOB.json`` holds the keyword arguments of :func:`caopd.training.distill.run_distill`
(``distill.schedule: rounds``, with ``examples_path``) or of
:func:`caopd.training.online.run_online_distill` (``online``, with ``data_dir``), paths as
strings, ``null`` for none, plus an optional ``"summary"`` path where the main process writes
the returned summary as JSON; :func:`write_job` writes one. A tracker cannot cross a process
boundary: the caller logs ``curves.parquet`` from the output directory instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PATH_KEYS = ("examples_path", "data_dir", "student_dir", "teacher_dir", "state_dir", "out", "work_dir")
JOB_KEYS = frozenset((*PATH_KEYS, "params", "seed", "threads", "summary"))
#: The data argument each schedule trains from.
DATA_KEY = {"rounds": "examples_path", "online": "data_dir"}
#: Seconds a launched run gets to end after SIGTERM before it is killed.
TERMINATE_GRACE = 30.0


def write_job(path: str | Path, **job: Any) -> Path:
    """Write the distill function's keyword arguments (and ``summary``) to ``path`` as JSON."""
    unknown = sorted(set(job) - JOB_KEYS)
    if unknown:
        raise ValueError(f"job keys {unknown} are not arguments of run_distill / run_online_distill")
    encoded = {k: (str(v) if isinstance(v, Path) else v) for k, v in job.items()}
    path = Path(path)
    path.write_text(json.dumps(encoded, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_job(path: str | Path) -> dict[str, Any]:
    """The job's keyword arguments with path strings turned into ``Path`` objects.

    Raises:
        ValueError: not a JSON object, unknown keys, or a missing argument (``examples_path`` for
            the ``rounds`` schedule, ``data_dir`` for ``online``).
    """
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(job, Mapping):
        raise ValueError(f"{path}: a job file holds a JSON object")
    unknown = sorted(set(job) - JOB_KEYS)
    required = {"params", "student_dir", "out", "seed"}
    schedule = job.get("params", {}).get("distill", {}).get("schedule", "rounds")
    required.add(DATA_KEY.get(schedule, "examples_path"))
    missing = sorted(required - set(job))
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    return {
        k: (Path(v) if k in (*PATH_KEYS, "summary") and v is not None else v)
        for k, v in job.items()
    }


def run_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run the distill function of the job's schedule on a :func:`read_job` result."""
    job = dict(job)
    job.pop("summary", None)
    for key in ("teacher_dir", "state_dir", "work_dir"):
        job.setdefault(key, None)
    params = job.pop("params")
    if params["distill"]["schedule"] == "online":
        from caopd.training.online import run_online_distill

        return run_online_distill(params, **job)
    from caopd.training.distill import run_distill

    return run_distill(params, **job)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path, help="JSON file of the distill arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    job = read_job(args.job)
    summary = run_job(job)
    from accelerate import PartialState

    if job.get("summary") is not None and PartialState().is_main_process:
        job["summary"].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


# --- the launcher: what the distill rule runs when distill.processes > 1 ------------------------


def launch_command(job_file: Path, *, processes: int, accelerate_config: Path) -> list[str]:
    """``accelerate launch`` of this module on ``job_file`` with ``processes`` processes.

    ``--main_process_port 0``: accelerate picks a free port just before torchrun binds it (and
    falls back to torchrun's standalone rendezvous if it is taken), so jobs sharing a node do
    not race for one port during the seconds the launcher takes to import.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config),
        "--num_processes", str(processes),
        "--main_process_port", "0",
        "-m", "caopd.training.launch", "--job", str(job_file),
    ]


def launch_env(root: Path, threads_per_process: int) -> dict[str, str]:
    """The launched processes' environment: the checkout first on ``PYTHONPATH`` (the same
    ``caopd`` as the job's) and ``threads_per_process`` OpenMP threads each."""
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS=str(threads_per_process))


def _stream(log: IO[str] | None) -> IO[str] | None:
    """``log`` if the child can write to it directly (it has a file descriptor), else None."""
    if log is None:
        return None
    try:
        log.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    log.flush()
    return log


def run_launched(cmd: Sequence[str], env: Mapping[str, str], log: IO[str] | None) -> None:
    """Run ``cmd`` in its own session with its output in ``log``; on any exception in the
    caller (a SIGTERM turned into SystemExit, Ctrl-C) end the whole process group first, so a
    cancelled job leaves no training processes behind and a rerun resumes from the checkpoint.

    Raises:
        RuntimeError: the launch exited non-zero (its traceback is in ``log``).
    """
    stream = _stream(log)
    child = subprocess.Popen(list(cmd), env=dict(env), stdout=stream, stderr=stream, start_new_session=True)
    try:
        code = child.wait()
    except BaseException:
        _end_group(child)
        raise
    if code != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with status {code}; its traceback is in the log above")


def _end_group(child: subprocess.Popen) -> None:
    """SIGTERM the child's process group; after the child has ended, or
    :data:`TERMINATE_GRACE` seconds, SIGKILL whatever of the group is left."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        child.wait(timeout=TERMINATE_GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def launch_distill(
    params: Mapping[str, Any],
    arguments: Mapping[str, Any],
    *,
    processes: int,
    accelerate_config: Path,
    threads_per_process: int,
    root: Path,
    log: IO[str] | None = None,
) -> dict[str, Any]:
    """Run one distill round in ``processes`` processes through ``accelerate launch``.

    Args:
        params: the stage params (``distill.schedule`` picks the function).
        arguments: the function's other keyword arguments (paths, seed; no tracker).
        processes: how many processes (``--num_processes``; the config file's value is ignored).
        accelerate_config: the accelerate config file.
        threads_per_process: torch / OpenMP threads of each process.
        root: the checkout whose ``caopd`` the processes import.
        log: where the processes' output goes (the job's log).

    Returns:
        The function's summary, as written by the main process.
    """
    with tempfile.TemporaryDirectory(prefix="caopd-launch-") as tmp:
        summary = Path(tmp) / "summary.json"
        job_file = write_job(
            Path(tmp) / "job.json", params=dict(params), threads=threads_per_process, summary=summary,
            **arguments,
        )
        cmd = launch_command(job_file, processes=processes, accelerate_config=accelerate_config)
        logging.getLogger(__name__).info("launching %d processes: %s", processes, " ".join(cmd))
        run_launched(cmd, launch_env(root, threads_per_process), log)
        return json.loads(summary.read_text(encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
