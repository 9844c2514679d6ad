"""The HF rollout engine and the rollouts file, on the tiny local model (CPU, float32)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

from caopd.rollouts import (
    ENGINES,
    RolloutRecord,
    SamplingConfig,
    make_engine,
    read_rollouts,
    write_rollouts,
)
from caopd.rollouts.prompting import resolve_stop_ids
from caopd.rollouts.hf import HFEngine, left_pad, plan_batches, trim_completion

ANSWER = "<answer>B</answer>\nConfidence: 0.75"


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer."}, {"role": "user", "content": text}]


PROMPTS = [
    ("q-long", _chat("What is 12 + 30? Options: A) 42 B) 41 C) 40 D) 43. Level 2.")),
    ("q-short", _chat("What is 1 + 2?")),
    ("q-mid", _chat("What is 7 + 8? Level 1.")),
]


def _train_to_answer(src: Path, dst: Path, steps: int = 25) -> Path:
    """Fine-tune the tiny model briefly so that it answers ``ANSWER`` and then emits EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    torch.manual_seed(0)
    rng = random.Random(0)
    rows = []
    for _ in range(8):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompt = tok.apply_chat_template(_chat(f"What is {a} + {b}?"), add_generation_prompt=True, tokenize=True)
        completion = tok(ANSWER)["input_ids"] + [tok.eos_token_id]
        rows.append((list(prompt["input_ids"]), completion))
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, completion) in enumerate(rows):  # right padding, loss on the completion only
        ids[i, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        labels[i, len(prompt) : len(prompt) + len(completion)] = torch.tensor(completion)
        mask[i, : len(prompt) + len(completion)] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> HFEngine:
    """The random tiny model: almost never emits EOS."""
    return HFEngine(str(tiny_model_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def answering_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HFEngine:
    """The tiny model trained to answer ``ANSWER`` + EOS: completions end with "stop"."""
    directory = _train_to_answer(tiny_model_dir, tmp_path_factory.mktemp("answering"))
    return HFEngine(str(directory), device="cpu", progress=False)


# --- SamplingConfig ------------------------------------------------------------------------------


def test_sampling_config_defaults_follow_reference():
    config = SamplingConfig()
    assert (config.n, config.temperature, config.top_p, config.greedy) == (8, 1.0, 1.0, False)
    assert SamplingConfig(n=1, greedy=True, temperature=0.0).greedy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 4, "greedy": True}, "set n: 1"),
        ({"temperature": 0.0}, "greedy: true"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_sampling_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


# --- pure helpers --------------------------------------------------------------------------------


def test_plan_batches_covers_every_row_once_longest_first():
    batches = plan_batches([3, 9, 5], n=4, batch_size=5)
    rows = [row for batch in batches for row in batch]
    assert sorted(rows) == [(p, j) for p in range(3) for j in range(4)]
    assert all(len(b) <= 5 for b in batches)
    assert [p for p, _ in rows] == [1] * 4 + [2] * 4 + [0] * 4


def test_left_pad_and_trim():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert trim_completion([4, 2, 3, 3], {2}, 4) == ([4, 2], "stop")
    assert trim_completion([4, 5, 6, 7], {2}, 4) == ([4, 5, 6, 7], "length")
    assert trim_completion([2, 2], {2}, 4) == ([2], "stop")  # pad == eos: keep only the first


# --- generation ----------------------------------------------------------------------------------


def _argmax_completion(engine: HFEngine, record: RolloutRecord) -> list[int]:
    """Greedy choices of the model at every completion step, scored in one forward pass."""
    ids = torch.tensor([record.prompt_token_ids + record.completion_token_ids])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0].float()
    logits = logits.clone()  # a normal tensor, editable outside inference mode
    if engine.pad_token_id not in engine.stop_token_ids:
        logits[:, engine.pad_token_id] = float("-inf")  # the engine never samples padding
    start = len(record.prompt_token_ids) - 1
    return logits[start : start + len(record.completion_token_ids)].argmax(-1).tolist()


def test_greedy_is_deterministic_and_argmax_at_every_step(answering_engine: HFEngine):
    config = SamplingConfig(n=1, greedy=True, max_new_tokens=24)
    first = answering_engine.generate(PROMPTS, config, seed=0)
    assert first == answering_engine.generate(PROMPTS, config, seed=0)
    other_seed = answering_engine.generate(PROMPTS, config, seed=123)
    assert [r.completion_token_ids for r in other_seed] == [r.completion_token_ids for r in first]
    for record in first:
        assert record.completion_token_ids == _argmax_completion(answering_engine, record)
    assert any(r.finish_reason == "stop" for r in first)
    stopped = next(r for r in first if r.finish_reason == "stop")
    assert stopped.completion_token_ids[-1] in answering_engine.stop_token_ids
    assert stopped.text == ANSWER


def test_greedy_random_model_is_argmax(sharp_engine: HFEngine):
    records = sharp_engine.generate(PROMPTS, SamplingConfig(n=1, greedy=True, max_new_tokens=16), seed=0)
    assert len({tuple(r.completion_token_ids) for r in records}) == len(PROMPTS)
    for record in records:
        assert record.completion_token_ids == _argmax_completion(sharp_engine, record)


def test_sampling_reproducible_by_seed(engine: HFEngine):
    config = SamplingConfig(n=4, max_new_tokens=12, batch_size=5)
    a = engine.generate(PROMPTS, config, seed=7)
    b = engine.generate(PROMPTS, config, seed=7)
    c = engine.generate(PROMPTS, config, seed=8)
    assert a == b
    assert [r.completion_token_ids for r in a] != [r.completion_token_ids for r in c]
    assert {r.seed for r in a} == {7}
    # samples of one prompt differ from each other
    assert len({tuple(r.completion_token_ids) for r in a if r.prompt_id == "q-short"}) > 1


def test_n_samples_in_input_order(engine: HFEngine):
    # batch_size 3 with n=2: one prompt's samples are split across two batches
    records = engine.generate(PROMPTS, SamplingConfig(n=2, max_new_tokens=4, batch_size=3), seed=0)
    assert [(r.prompt_id, r.sample_index) for r in records] == [
        (pid, j) for pid, _ in PROMPTS for j in range(2)
    ]
    prompt_ids = engine.encode_prompts(PROMPTS)
    for record in records:
        assert record.prompt_token_ids == prompt_ids[[p for p, _ in PROMPTS].index(record.prompt_id)]


@pytest.mark.parametrize("which", ["engine", "answering_engine"])
def test_completions_are_exact_unpadded_and_decoded(which: str, request: pytest.FixtureRequest):
    eng: HFEngine = request.getfixturevalue(which)
    config = SamplingConfig(n=6, max_new_tokens=20, batch_size=8)
    records = eng.generate(PROMPTS, config, seed=3)
    stop_ids = set(eng.stop_token_ids)
    for r in records:
        ids = r.completion_token_ids
        body = ids[:-1] if r.finish_reason == "stop" else ids
        assert not stop_ids & set(body)
        assert eng.pad_token_id not in body
        if r.finish_reason == "stop":
            assert ids[-1] in stop_ids
        else:
            assert len(ids) == config.max_new_tokens
        assert r.text == eng.tokenizer.decode(ids, skip_special_tokens=True)
    if which == "answering_engine":
        assert any(r.finish_reason == "stop" for r in records)


@pytest.mark.parametrize("which", ["sharp_engine", "answering_engine"])
def test_left_padding_does_not_change_greedy_completion(which: str, request: pytest.FixtureRequest):
    eng: HFEngine = request.getfixturevalue(which)
    short = ("short", _chat("What is 5 + 6?"))
    long = ("long", _chat("What is 5 + 6? " + "Options: A) 11 B) 12 C) 10 D) 13. " * 6))
    config = SamplingConfig(n=1, greedy=True, max_new_tokens=24)
    alone = eng.generate([short], config, seed=0)[0]
    together = eng.generate([long, short], config, seed=0)
    assert len(together[0].prompt_token_ids) > 3 * len(alone.prompt_token_ids)
    assert together[1] == alone


def test_checkpoint_sampling_defaults_are_ignored(engine: HFEngine, tiny_model_dir: Path, tmp_path: Path):
    # A checkpoint's generation_config.json (Qwen3: top_k 20, temperature 0.6...) must not change
    # what SamplingConfig asks for.
    import json
    import shutil

    directory = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    gen_path = directory / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen.update(do_sample=True, top_k=1, temperature=0.1, top_p=0.5, repetition_penalty=3.0)
    gen_path.write_text(json.dumps(gen))
    other = HFEngine(str(directory), device="cpu", progress=False)
    config = SamplingConfig(n=2, max_new_tokens=8)
    assert other.generate(PROMPTS, config, seed=4) == engine.generate(PROMPTS, config, seed=4)


def test_stop_ids_join_tokenizer_and_checkpoint_eos():
    assert resolve_stop_ids(2, [2, 0]) == [2, 0]
    assert resolve_stop_ids(5, 7) == [5, 7]
    assert resolve_stop_ids(None, [9]) == [9]
    with pytest.raises(ValueError, match="eos"):
        resolve_stop_ids(None, None)


def test_duplicate_prompt_ids_rejected(engine: HFEngine):
    with pytest.raises(ValueError, match="duplicate prompt_id"):
        engine.generate([PROMPTS[0], PROMPTS[0]], SamplingConfig(n=1, max_new_tokens=2), seed=0)


def test_prompt_too_long_for_model_rejected(engine: HFEngine):
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        engine.generate(PROMPTS[:1], SamplingConfig(n=1, max_new_tokens=250), seed=0)


# --- registry and rollouts file ------------------------------------------------------------------


def test_make_engine(tiny_model_dir: Path):
    assert set(ENGINES) == {"hf", "vllm"}
    assert isinstance(make_engine("hf", tiny_model_dir, device="cpu", progress=False), HFEngine)
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("nope", tiny_model_dir)


def test_vllm_engine_missing_dependency_message(tiny_model_dir: Path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"caopd\[vllm\]"):
            make_engine("vllm", tiny_model_dir)
    else:
        pytest.skip("vllm is installed")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rollouts_file_is_byte_stable_and_round_trips(engine: HFEngine, tmp_path: Path):
    records = engine.generate(PROMPTS, SamplingConfig(n=3, max_new_tokens=6), seed=11)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    first = write_rollouts(records, tmp_path / "a" / "rollouts.parquet")
    second = write_rollouts(shuffled, tmp_path / "b" / "rollouts.parquet")
    assert _sha256(first) == _sha256(second)
    again = write_rollouts(read_rollouts(first), tmp_path / "c.parquet")
    assert _sha256(again) == _sha256(first)
    assert read_rollouts(first) == sorted(records, key=lambda r: (r.prompt_id, r.sample_index))
    assert list(tmp_path.glob("**/.*")) == []  # no temp files left


def test_read_rollouts_rejects_other_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not a rollouts file"):
        read_rollouts(tmp_path / "x.parquet")


def test_rollout_record_validates_finish_reason():
    with pytest.raises(ValueError, match="finish_reason"):
        RolloutRecord("p", 0, [1], [2], "", "abort", 0)  # type: ignore[arg-type]
