"""The vLLM rollout engine against the HF engine on a tiny model (GPU only; skipped without
CUDA or vllm).

The tiny model here has head_dim 64 (vLLM's attention kernels do not take the default fixture's
head_dim 8) and its weight matrices are scaled by 10 so that greedy completions depend on the
prompt. vLLM and HF kernels differ numerically, so greedy agreement is checked as: every token
vLLM picked is within ``TOL`` of the HF float32 argmax logit given vLLM's own prefix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from caopd.models.random_model import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
vllm = pytest.importorskip("vllm")

from caopd.rollouts import SamplingConfig, make_engine  # noqa: E402
from caopd.rollouts.hf import HFEngine  # noqa: E402

TOL = 0.05


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PROMPTS = [
    ("a", _chat("What is 12 + 30? Options: A) 42 B) 41 C) 40 D) 43.")),
    ("b", _chat("What is 1 + 2?")),
    ("c", _chat("Compute the sum of 7 and 8. Level 1.")),
]


@pytest.fixture(scope="module")
def gpu_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    directory = build_tiny_model(
        tmp_path_factory.mktemp("tiny_gpu"), hidden_size=256, intermediate_size=512, num_attention_heads=4
    )
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def vllm_engine(gpu_model_dir: Path):
    return make_engine(
        "vllm",
        gpu_model_dir,
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=256,
        enforce_eager=True,
        progress=False,
    )


@pytest.fixture(scope="module")
def hf_engine(gpu_model_dir: Path) -> HFEngine:
    return HFEngine(str(gpu_model_dir), dtype="float32", device="cuda", progress=False)


def test_greedy_matches_hf(vllm_engine, hf_engine: HFEngine):
    config = SamplingConfig(n=1, greedy=True, max_new_tokens=24)
    v = vllm_engine.generate(PROMPTS, config, seed=0)
    h = hf_engine.generate(PROMPTS, config, seed=0)
    assert [r.prompt_token_ids for r in v] == [r.prompt_token_ids for r in h]
    for record in v:
        ids = torch.tensor([record.prompt_token_ids + record.completion_token_ids], device="cuda")
        with torch.inference_mode():
            logits = hf_engine.model(input_ids=ids).logits[0].float()
        logits = logits.clone()
        logits[:, hf_engine.pad_token_id] = float("-inf")
        start = len(record.prompt_token_ids) - 1
        steps = logits[start : start + len(record.completion_token_ids)]
        chosen = steps.gather(1, torch.tensor(record.completion_token_ids, device="cuda")[:, None])[:, 0]
        assert torch.all(steps.max(-1).values - chosen <= TOL), record
        assert record.text == hf_engine.tokenizer.decode(record.completion_token_ids, skip_special_tokens=True)
        assert (record.finish_reason == "stop") == (record.completion_token_ids[-1] in hf_engine.stop_token_ids)
    agree = sum(a.completion_token_ids == b.completion_token_ids for a, b in zip(v, h))
    assert agree >= len(PROMPTS) - 1


def test_sampling_reproducible_and_batch_independent(vllm_engine):
    config = SamplingConfig(n=4, max_new_tokens=16)
    a = vllm_engine.generate(PROMPTS, config, seed=5)
    assert a == vllm_engine.generate(PROMPTS, config, seed=5)
    assert [(r.prompt_id, r.sample_index) for r in a] == [(p, j) for p, _ in PROMPTS for j in range(4)]
    alone = vllm_engine.generate(PROMPTS[1:2], config, seed=5)
    assert alone == [r for r in a if r.prompt_id == "b"]
    other = vllm_engine.generate(PROMPTS, config, seed=6)
    assert [r.completion_token_ids for r in other] != [r.completion_token_ids for r in a]
    for r in a:
        assert hf_pad_free(r.completion_token_ids, vllm_engine)


def hf_pad_free(ids: list[int], engine) -> bool:
    """No pad id in the completion unless the pad id is also a stop id."""
    return engine.pad_token_id in engine.stop_token_ids or engine.pad_token_id not in ids
