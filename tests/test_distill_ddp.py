"""The distill launcher under ``accelerate launch``: 2 CPU processes, gloo (DESIGN §10)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from caopd.training.launch import read_job, write_job
from test_distill_loop import distill, make_examples, make_params

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_job_file_round_trip(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.json", params={"round": 1}, examples_path=tmp_path / "e",
                    student_dir=tmp_path / "s", teacher_dir=None, out=tmp_path / "o", seed=3)
    back = read_job(job)
    assert back["examples_path"] == tmp_path / "e" and back["teacher_dir"] is None
    with pytest.raises(ValueError, match="not arguments"):
        write_job(tmp_path / "bad.json", learning_rate=1)


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
        "--main_process_port", str(free_port()),
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
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-9), key
