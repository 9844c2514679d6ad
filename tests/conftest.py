"""Shared test fixtures: a tiny random Qwen2 causal LM with a locally trained tokenizer.

Nothing is downloaded. The model is built by :func:`caopd.models.random_model.build_tiny_model`
(a plain function in the package, so tests, the GPU tests, which need a wider head dimension, and
the benchmark scripts can build variants of it); :func:`tiny_model_dir` is the session-scoped
fixture most tests use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from caopd.models.random_model import build_tiny_model


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
