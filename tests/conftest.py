"""Shared test fixtures: a tiny random Qwen2 causal LM with a locally trained tokenizer.

Also :func:`mlflow_server`, a real tracking server on localhost for the DAG tests. Nothing is
downloaded. The model is built by :func:`caopd.models.random_model.build_tiny_model` (a plain
function in the package, so tests, the GPU tests, which need a wider head dimension, and the
benchmark scripts can build variants of it); :func:`tiny_model_dir` is the session-scoped fixture
most tests use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from caopd.models.random_model import build_tiny_model

#: Seconds a test's ``mlflow server`` may take to answer /health (a liveness bound, not a timing).
SERVER_START_BOUND = 180.0


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run the files of ``slow`` tests (whole pipelines, minutes each) first, the rest after, each
    group in collection order.

    The suite runs on pytest-xdist workers, one file per work unit (``-n auto --dist loadfile
    --no-loadscope-reorder``, pyproject.toml); a worker takes the next file when its queue runs
    low. Started last, a pipeline file would run alone while the other workers sit idle; started
    first, the unit files fill in around it. Without xdist only the order changes.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model + tokenizer saved with ``save_pretrained`` (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def qwen3_8b_shape_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3-8B's architecture as a model directory holding its ``config.json`` only (no weights,
    nothing downloaded): what a dry run and the memory planner read of a model."""
    from transformers import Qwen3Config

    directory = tmp_path_factory.mktemp("qwen3_8b_shape")
    Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                max_position_embeddings=40960, rope_theta=1000000.0).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sharp_engine(tiny_model_dir: Path):
    """An ``HFEngine`` on the random tiny model with every weight matrix scaled by 10.

    At the default init scale the random model's greedy output is one repeated token whatever
    the prompt; scaled up, it is chaotic and depends on every prompt token and position, so a
    padding or position bug changes its completions (checked: an all-ones attention mask does).
    """
    import torch

    from caopd.rollouts.hf import HFEngine

    eng = HFEngine(str(tiny_model_dir), device="cpu", progress=False)
    with torch.no_grad():
        for param in eng.model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    return eng


def publish_for_test(directory: str | Path) -> Path:
    """Write ``manifest.json`` (sha256 and size of every file) into a hand-built artifact
    directory, so the readers that verify artifacts (caopd.index, issue 13 row 3) accept it. A
    ``spec.json`` in it must hash to the directory's name, as in a real run."""
    from caopd.store import MANIFEST, file_table, write_json

    directory = Path(directory)
    write_json(directory / MANIFEST, {"files": file_table(directory)})
    return directory


@contextlib.contextmanager
def mlflow_server(directory: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free localhost port (SQLite backend store and proxied
    artifacts under ``directory``); yields its URI once ``/health`` answers; always stopped.

    Raises:
        RuntimeError: the server exited, or did not answer within :data:`SERVER_START_BOUND`
            seconds (its log attached).
    """
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "2", "--backend-store-uri", f"sqlite:///{directory / 'server.db'}",
           "--artifacts-destination", str(directory / "artifacts")]
    uri = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=directory,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_BOUND
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    response.read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
