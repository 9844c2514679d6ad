"""A tiny random Qwen2 causal LM with a locally trained chat tokenizer, for tests and benchmarks.

Not the embedded default model (that is :func:`caopd.models.base.build_tiny`, warm-up trained on
the arith task): this one is untrained, built in a second, and exists so that tests and the
benchmark scripts have a real ``transformers`` model + tokenizer to load with
``from_pretrained``, with nothing downloaded and nothing but the package's own dependencies
(no pytest).

The tokenizer comes from :mod:`caopd.models.tokenizer` (Qwen2's pre-tokenizer pipeline, so a
save/load through ``AutoTokenizer`` keeps the ids; see that module) and is re-checked after saving.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
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
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Build and save a tiny random Qwen2 causal LM plus its chat tokenizer into ``directory``.

    The tokenizer is a byte-level BPE (~``vocab_size`` entries) trained on generated arithmetic
    strings with Qwen2's pre-tokenizer; eos is ``<|im_end|>``, pad is ``<|pad|>`` (eos != pad),
    no bos. After saving, the tokenizer is reloaded with ``AutoTokenizer`` and the ids of a few
    probe strings are compared with the original's; a mismatch raises ``RuntimeError``.
    ``max_positions`` is the RoPE context (no weights depend on it): raise it for the science and
    tool-use prompts (thousands of tokens with this small vocabulary).

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
        max_position_embeddings=max_positions,
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
