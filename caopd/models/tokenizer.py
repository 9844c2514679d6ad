"""A chat-template tokenizer trained locally with ``tokenizers`` (DESIGN §6).

Byte-level BPE (any text round-trips) with digits split one per token, so a model can write any
two-decimal confidence. Special tokens follow Qwen's chat format: ``<|im_start|>``,
``<|im_end|>`` (end of a turn, the EOS of a completion) and ``<|endoftext|>`` (padding).

transformers 5 loads any tokenizer saved beside a ``model_type: qwen2`` config as
``Qwen2Tokenizer`` (``qwen2`` is in ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``, so
``tokenizer_class`` in ``tokenizer_config.json`` is ignored), and that class rebuilds the
normalizer, pre-tokenizer and decoder with Qwen's fixed pipeline, keeping only vocab and merges.
A BPE trained with another pre-tokenizer silently gets different ids after a save/load. So we
train with exactly Qwen2's pipeline (NFC, Qwen2's split regex, byte-level without regex), and
:func:`check_roundtrip` proves after reloading with ``AutoTokenizer`` that ids are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Qwen2's pre-tokenization regex (transformers/models/qwen2/tokenization_qwen2.py): digits one
#: per token, words with their leading space.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"


class TokenizerRoundTripError(RuntimeError):
    """A saved tokenizer reloads with different token ids."""


def train_tokenizer(corpus: Iterable[str], vocab_size: int, *, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                    eos_token: str = EOS_TOKEN, pad_token: str = PAD_TOKEN):
    """Train a byte-level BPE tokenizer with Qwen2's pipeline on ``corpus``.

    Returns a ``PreTrainedTokenizerFast`` with the chat template, left padding, no BOS.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=None,
        bos_token=None,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """``save_pretrained``; the config names ``Qwen2Tokenizer``, the class every loader uses for
    a qwen2 model (documentation only: the auto class ignores the field for qwen2)."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_roundtrip(tokenizer, directory: str | Path, samples: Sequence[str]) -> None:
    """Reload ``directory`` with ``AutoTokenizer`` and require identical ids on ``samples``."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(directory))
    for text in samples:
        a = tokenizer(text, add_special_tokens=False)["input_ids"]
        b = reloaded(text, add_special_tokens=False)["input_ids"]
        if a != b:
            raise TokenizerRoundTripError(
                f"{directory}: reloaded as {type(reloaded).__name__}, ids differ on {text[:60]!r}: "
                f"{a[:12]} vs {b[:12]}"
            )
        if reloaded.decode(b) != text:
            raise TokenizerRoundTripError(f"{directory}: decode does not invert encode on {text[:60]!r}")
    for name in ("eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) != getattr(reloaded, name):
            raise TokenizerRoundTripError(f"{directory}: {name} changed on reload")
    if reloaded.chat_template != tokenizer.chat_template:
        raise TokenizerRoundTripError(f"{directory}: chat template changed on reload")
