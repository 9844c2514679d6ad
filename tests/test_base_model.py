"""The base_model stage: the embedded tiny model builds, reloads with the same token ids and
logits, and a rebuild under the same key is byte-identical on CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

from caopd.job import open_job
from caopd.models.base import build_base_model, model_dir
from caopd.hashing import canonical_json
from caopd.store import verify_artifact

TINY = {
    "vocab_size": 320,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "max_positions": 512,
    "warmup": {"steps": 3, "batch_size": 4, "lr": 1e-3, "examples": 40, "induction_steps": 2, "induction_max_steps": 4, "induction_stop_loss": 0.5, "induction_lr_warmup": 2},
}


def _build(root: Path, tiny: dict = TINY) -> Path:
    params = {"seed": 0, "source": "tiny", "tiny": tiny}
    pre = {"stage": "base_model", "params": params, "code": "test", "upstream": {}}
    key = hashlib.sha256(canonical_json(pre).encode()).hexdigest()[:16]
    out = root / "results" / "base_model" / key
    with open_job(preimage=pre, key=key, seed=0, inputs={}, output=out, root=root) as job:
        job.result.update(build_base_model(params, job.out, threads=1))
    return out


def test_tiny_model_builds_reloads_and_rebuilds_byte_identical(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = _build(tmp_path / "a")
    second = _build(tmp_path / "b")
    files_a = verify_artifact(first)["files"]
    files_b = verify_artifact(second)["files"]
    assert "model/model.safetensors" in files_a and "model/tokenizer.json" in files_a
    assert files_a == files_b  # same key, same bytes

    directory = model_dir(first)
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert model.config.model_type == "qwen2"
    text = "Level 2. What is 47 + 8?\nConfidence: 0.62"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    manifest = verify_artifact(first)
    assert manifest["result"]["tokenizer_roundtrip"] == "ok"
    assert 0 < manifest["result"]["n_parameters"] < 5_000_000
    # 2 copy steps, then on to the 4-step cap while the loss is above 0.5 (it is, after 4 steps)
    assert manifest["result"]["induction_steps_run"] == 4
    assert manifest["result"]["induction_converged"] is False


def test_without_a_stop_loss_the_copy_task_runs_its_steps_unjudged(tmp_path):
    tiny = {**TINY, "warmup": {**TINY["warmup"], "induction_stop_loss": None}}
    result = verify_artifact(_build(tmp_path, tiny))["result"]
    assert result["induction_steps_run"] == 2 and result["induction_converged"] is None


def _local_base(root: Path, source: Path) -> Path:
    from caopd.sources import model_fingerprint

    params = {"seed": 0, "source": str(source), "origin": model_fingerprint(str(source), None)}
    pre = {"stage": "base_model", "params": params, "code": "test", "upstream": {}}
    key = hashlib.sha256(canonical_json(pre).encode()).hexdigest()[:16]
    out = root / "results" / "base_model" / key
    with open_job(preimage=pre, key=key, seed=0, inputs={}, output=out, root=root) as job:
        job.result.update(build_base_model(params, job.out, threads=1))
    return out


def test_a_local_model_is_verified_on_every_read(tmp_path, tiny_model_dir, monkeypatch):
    """Issue 13 row 3: a local model.source is read only as the sha256s it was recorded with."""
    import shutil

    import pytest

    from caopd.sources import SourceError

    monkeypatch.setenv("CAOPD_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "local_model"
    shutil.copytree(tiny_model_dir, source)
    artifact = _local_base(tmp_path, source)
    assert model_dir(artifact) == source.resolve()
    weights = next(source.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern flipped
    weights.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=rf"{weights.name}: sha256 .* differs .*/model_ref\.json"):
        model_dir(artifact)


def test_a_local_model_changed_after_planning_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    import pytest

    from caopd.sources import model_fingerprint
    from caopd.sources import SourceError

    monkeypatch.setenv("CAOPD_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "local_model"
    shutil.copytree(tiny_model_dir, source)
    params = {"seed": 0, "source": str(source), "origin": model_fingerprint(str(source), None)}
    (source / "config.json").write_text((source / "config.json").read_text() + "\n")
    with pytest.raises(SourceError, match=r"config\.json: sha256 .* the plan of this key"):
        build_base_model(params, tmp_path / "out", threads=1)


def test_copy_task_learning_rate_rises_linearly_then_is_restored():
    """train_induction's lr_warmup: step s (0-based) runs at (s + 1) / lr_warmup of the base rate
    up to the base rate; the optimizer leaves the copy task at its base rate."""
    import torch
    from transformers import Qwen2ForCausalLM

    from caopd.models.base import tiny_config, tokenizer_corpus
    from caopd.models.tokenizer import train_tokenizer
    from caopd.models.warmup import train_induction

    tokenizer = train_tokenizer(tokenizer_corpus(0, [1, 2], n=200), TINY["vocab_size"])
    model = Qwen2ForCausalLM(tiny_config(TINY, tokenizer))
    seen: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    opt = Recording(model.parameters(), lr=0.4)
    loss, run = train_induction(model, tokenizer, opt, steps=6, length=16, batch_size=2, seed=0, lr_warmup=4)
    assert run == 6
    assert len(seen) == 6 and all(abs(a - b) < 1e-12 for a, b in zip(seen, [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]))
    assert opt.param_groups[0]["lr"] == 0.4
    seen.clear()
    train_induction(model, tokenizer, opt, steps=3, length=16, batch_size=2, seed=0, lr_warmup=0)
    assert seen == [0.4, 0.4, 0.4]
