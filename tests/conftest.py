"""Shared test fixtures: a tiny random Qwen2 causal LM with a locally trained tokenizer.

Also :func:`mlflow_server`, a real tracking server on localhost for the DAG tests. Nothing is
downloaded. :func:`build_tiny_model` is a plain function so tests (and the GPU tests,
which need a wider head dimension) can build variants of it; :func:`tiny_model_dir` is the
session-scoped fixture most tests use.

The tokenizer comes from :mod:`caopd.models.tokenizer` (Qwen2's pre-tokenizer pipeline, so a
save/load through ``AutoTokenizer`` keeps the ids; see that module) and is re-checked after saving.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
#: Seconds a test's ``mlflow server`` may take to answer /health (a liveness bound, not a timing).
SERVER_START_BOUND = 180.0
ROUND_TRIP_PROBES = [
    "What is 3 + 4? <answer>A</answer> Confidence: 0.75",
    "What is 123 + 4567?\nA) 4690 B) 4680\n\n  Answer:  <answer>B</answer>",
    "<|im_start|>user\nHi there, it's 12:30.<|im_end|>\n<|im_start|>assistant\n",
    "Confidence: your confidence level (0.0-1.0), café naïve",
]


def _corpus(n: int, seed: int) -> list[str]:
    """``n`` arithmetic-MCQ-like strings for training the tiny BPE."""
    rng = random.Random(seed)
    words = ["What", "is", "Compute", "the", "sum", "of", "and", "Answer", "Options", "Level",
             "system", "user", "assistant", "Note", "correct", "solution", "response", "question"]
    texts = []
    for i in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        letter = "ABCD"[i % 4]
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        texts.append(
            f"{filler}: What is {a} {op} {b}?\nA) {a + b} B) {a - b} C) {a * b} D) {b}\n"
            f"<answer>{letter}</answer>\nConfidence: {rng.random():.2f}"
        )
    return texts


def build_tiny_model(
    directory: str | Path,
    *,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int = 300,
    seed: int = 0,
) -> Path:
    """Build and save a tiny random Qwen2 causal LM plus its chat tokenizer into ``directory``.

    The tokenizer is a byte-level BPE (~``vocab_size`` entries) trained on generated arithmetic
    strings with Qwen2's pre-tokenizer; eos is ``<|im_end|>``, pad is ``<|pad|>`` (eos != pad),
    no bos. After saving, the tokenizer is reloaded with ``AutoTokenizer`` and the ids of a few
    probe strings are compared with the original's; a mismatch raises ``RuntimeError``.

    Returns the directory (a ``Path``), loadable with ``from_pretrained``.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from caopd.models.tokenizer import check_roundtrip, save_tokenizer, train_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(
        _corpus(400, seed), vocab_size, special_tokens=SPECIAL_TOKENS, pad_token="<|pad|>"
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    check_roundtrip(tokenizer, directory, ROUND_TRIP_PROBES)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model + tokenizer saved with ``save_pretrained`` (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


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
