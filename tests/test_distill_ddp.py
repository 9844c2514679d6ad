"""The distill launcher under ``accelerate launch``: 2 CPU processes, gloo (DESIGN §10), both
schedules; a checkpoint resumed by a launched run; a terminated job ends its launched processes.

Tolerance of 2 processes against 1 on the same global batch (the two differ only in the order of
float summations): 1e-4 relative on every curve value of every step (loss, divergence, entropy,
targets), or 1e-7 absolute (``CURVE_TOL``) where the value is a difference of nearly equal terms:
an untrained tiny model's divergence is ~4e-6, the mean over tokens of log-probabilities of size
log V ~ 5.7 held in float32 (eps 1.2e-7), so its last bits move with the summation order, which the
thread count and the CPU's vector width set (measured 4e-10 on one AMD EPYC machine, 1.4e-9, 3.4e-4
relative, on another), while a sum in place of a mean moves it by 100%. 1e-3 on the gradient norm,
which after step 1 is taken at weights that already differ in the last bits; weights 1e-4 after two
steps (the rounds run), else the whole update within 1% in L2 norm: AdamW divides each gradient
element by its own running size, so the few elements whose gradient is at the scale of its eps=1e-8
move by float noise times the learning rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from caopd.training.launch import launch_distill, read_job, run_launched, write_job
from test_distill_loop import distill, make_examples, make_params

ROOT = Path(__file__).resolve().parent.parent
CPU_DDP = ROOT / "config" / "accelerate" / "cpu_ddp.yaml"
CURVE_TOL = {"rel": 1e-4, "abs": 1e-7}  # 2 processes against 1 (module docstring)


def test_job_file_round_trip(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.json", params={"round": 1}, examples_path=tmp_path / "e",
                    student_dir=tmp_path / "s", teacher_dir=None, out=tmp_path / "o", seed=3)
    back = read_job(job)
    assert back["examples_path"] == tmp_path / "e" and back["teacher_dir"] is None
    with pytest.raises(ValueError, match="not arguments"):
        write_job(tmp_path / "bad.json", learning_rate=1)
    online = {"round": 1, "distill": {"schedule": "online"}}
    write_job(tmp_path / "online.json", params=online, examples_path=tmp_path / "e",
              student_dir=tmp_path / "s", out=tmp_path / "o", seed=3)
    with pytest.raises(ValueError, match=r"missing keys \['data_dir'\]"):
        read_job(tmp_path / "online.json")
    write_job(tmp_path / "online.json", params=online, data_dir=tmp_path / "d",
              student_dir=tmp_path / "s", out=tmp_path / "o", seed=3)
    assert read_job(tmp_path / "online.json")["data_dir"] == tmp_path / "d"


def test_two_process_cpu_ddp_matches_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 9 examples, batch 4 over 2 processes, accum 2: step 1 = micro-batches of 4 and 4 (2 rows
    # per process), step 2 = one micro-batch of 1 example (process 1 runs a zero-weight filler).
    examples = make_examples(tiny_model_dir, tmp_path / "examples.parquet", 9)
    params = make_params([9], batch_size=4, grad_accum=2, epochs=1, checkpoint_every=1)
    job = write_job(
        tmp_path / "job.json", params=params, examples_path=examples, student_dir=tiny_model_dir,
        teacher_dir=None, state_dir=None, out=tmp_path / "ddp", work_dir=tmp_path / "ddp.work",
        seed=7, threads=1, summary=tmp_path / "summary.json",
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "config" / "accelerate" / "cpu_ddp.yaml"),
        "--main_process_port", "0",
        "-m", "caopd.training.launch", "--job", str(job),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert not (tmp_path / "ddp.work").exists()
    base = load_file(tiny_model_dir / "model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "student" / "model.safetensors")
    assert all(not torch.equal(base[k], ddp[k]) for k in base)

    # The same optimisation in one process: the token-count normaliser and DDP's gradient
    # averaging make the two agree up to float summation order.
    distill(params, examples, tiny_model_dir, tmp_path / "single")
    single = load_file(tmp_path / "single" / "student" / "model.safetensors")
    for name in base:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-4, rtol=1e-4, msg=name)
    rows_ddp = pq.read_table(tmp_path / "ddp" / "curves.parquet").to_pylist()
    rows_one = pq.read_table(tmp_path / "single" / "curves.parquet").to_pylist()
    assert len(rows_ddp) == len(rows_one) == 2
    for a, b in zip(rows_ddp, rows_one):
        assert a["step"] == b["step"] and a["lr"] == b["lr"]
        for key in ("loss", "divergence", "entropy", "mean_p_acc", "format_adherence", "grad_norm"):
            assert a[key] == pytest.approx(b[key], **CURVE_TOL), key


def _close_to(launched: Path, single: Path, base: Path) -> None:
    """A launched run against a one-process run of the same optimisation (tolerances in the
    module docstring): the curves step by step, and the weight updates as a whole."""
    rows_ddp = pq.read_table(launched / "curves.parquet").to_pylist()
    rows_one = pq.read_table(single / "curves.parquet").to_pylist()
    assert [r["step"] for r in rows_ddp] == [r["step"] for r in rows_one] and rows_one
    for a, b in zip(rows_ddp, rows_one):
        assert a["lr"] == b["lr"]
        for key in ("loss", "divergence", "entropy", "mean_p_acc", "format_adherence"):
            assert a[key] == pytest.approx(b[key], **CURVE_TOL), (a["step"], key)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), a["step"]
    start = load_file(base / "model.safetensors")
    ddp = load_file(launched / "student" / "model.safetensors")
    one = load_file(single / "student" / "model.safetensors")
    apart = sum(float((ddp[k] - one[k]).double().pow(2).sum()) for k in start) ** 0.5
    moved = sum(float((one[k] - start[k]).double().pow(2).sum()) for k in start) ** 0.5
    assert moved > 0 and apart <= 1e-2 * moved, (apart, moved)


def test_two_process_online_round_matches_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The online schedule through the launcher: the main process samples the window, both
    train on it. One window for the whole round (refresh_every 3 = its 3 steps), so both runs
    sample from the same initial student and the comparison is of training alone."""
    from caopd.data import write_split
    from caopd.training.online import run_online_distill
    from test_online import make_params as online_params
    from test_online import prompts

    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.jsonl", prompts(10))
    params = online_params(10, refresh_every=3, epochs=1, checkpoint_every=1, teacher="ema")
    common = dict(student_dir=tiny_model_dir, teacher_dir=None, state_dir=None, seed=5)
    summary = launch_distill(
        params, dict(common, data_dir=data, out=tmp_path / "ddp", work_dir=tmp_path / "ddp.work"),
        processes=2, accelerate_config=CPU_DDP, threads_per_process=1, root=ROOT,
    )
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["online_windows"] == 1
    assert not (tmp_path / "ddp.work").exists()
    run_online_distill(params, data_dir=data, out=tmp_path / "one", work_dir=tmp_path / "one.work", **common)
    for name in ("rollouts.parquet", "examples.parquet"):  # the same window: sampled once, by rank 0
        window = Path("online") / "refresh-00000" / name
        assert (tmp_path / "ddp" / window).read_bytes() == (tmp_path / "one" / window).read_bytes()
    _close_to(tmp_path / "ddp", tmp_path / "one", tiny_model_dir)


class Killed(RuntimeError):
    pass


def test_a_launched_run_resumes_the_checkpoint_of_a_killed_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A job killed after step 2 (of 4, checkpoints every step) is rerun as 2 processes: it
    resumes at step 2 and ends where an uninterrupted one-process run ends."""
    examples = make_examples(tiny_model_dir, tmp_path / "examples.parquet", 12)
    params = make_params([12], batch_size=3, grad_accum=1, epochs=1, checkpoint_every=1)
    work = tmp_path / "job.work"

    def kill_after_2(row: dict) -> None:
        if row["step"] == 2:
            raise Killed

    with pytest.raises(Killed):
        distill(params, examples, tiny_model_dir, tmp_path / "job", work_dir=work, on_step=kill_after_2)
    assert sorted(p.name for p in work.glob("step-*")) == ["step-00000002"]
    summary = launch_distill(
        params, dict(examples_path=examples, student_dir=tiny_model_dir, teacher_dir=None, state_dir=None,
                     out=tmp_path / "job", work_dir=work, seed=7),
        processes=2, accelerate_config=CPU_DDP, threads_per_process=1, root=ROOT,
    )
    assert summary["resumed_from"] == 2 and summary["global_step"] == 4 and summary["world_size"] == 2
    assert not work.exists()
    distill(params, examples, tiny_model_dir, tmp_path / "single")
    _close_to(tmp_path / "job", tmp_path / "single", tiny_model_dir)


def test_a_terminated_job_ends_its_launched_processes(tmp_path: Path) -> None:
    """SIGTERM to a job waiting on its launch (what scancel sends) ends the launched process
    group, grandchildren included, and the job exits through the error path."""
    ready, pids = tmp_path / "ready", tmp_path / "pids"
    tree = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(600)\n"
    )
    job = (
        "import signal, sys\n"
        "from caopd.job import _terminate_as_exit\n"
        "from caopd.training.launch import run_launched\n"
        "signal.signal(signal.SIGTERM, _terminate_as_exit)\n"
        f"run_launched([sys.executable, '-c', {tree!r}], {{}}, None)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", job], env=env)
    try:
        while not ready.exists():  # the launched tree is up (no deadline: the test's timeout rules)
            assert proc.poll() is None, "the job ended before its launch was up"
            time.sleep(0.05)
        launched = [int(p) for p in pids.read_text().split()]
        proc.send_signal(15)
        assert proc.wait(timeout=120) == 128 + 15
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in launched:
        assert _ended(pid), f"launched process {pid} survived its job"


def _ended(pid: int, bound: float = 60.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``bound`` seconds: a liveness bound for a
    process already sent SIGKILL, not a measure of speed."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
