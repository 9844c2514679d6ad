"""Prompt encoding shared by the rollout engines and the rewrite: the one chat encoder.

:func:`chat_prompt_ids` renders a chat with the tokenizer's chat template (generation prompt
added) and returns its ids; the engines sample from them, the rewrite builds the student and
teacher prompts with them, and :func:`encode_checked` refuses a prompt that leaves no room for
the completion. No torch import: the tokenizer is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from caopd.rollouts.engine import Prompt


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Raise ``ValueError`` on duplicate prompt ids or a prompt without messages."""
    seen: set[str] = set()
    for prompt_id, messages in prompts:
        if prompt_id in seen:
            raise ValueError(f"duplicate prompt_id {prompt_id!r}: prompt ids must be unique per generate() call")
        if not messages:
            raise ValueError(f"prompt {prompt_id!r} has no chat messages")
        seen.add(prompt_id)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]], **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template, generation prompt added.

    transformers 5 returns a ``BatchEncoding`` from ``apply_chat_template(tokenize=True)``
    (4.x returned a list); both are accepted.
    """
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **template_kwargs)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        if len(out) != 1:
            raise ValueError(f"chat template returned {len(out)} sequences for one conversation")
        out = out[0]
    return [int(i) for i in out]


def encode_checked(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    max_positions: int | None,
    **template_kwargs: Any,
) -> list[list[int]]:
    """Chat-templated ids of every prompt (generation prompt added); a ``ValueError`` names the
    first prompt that cannot fit ``max_new_tokens`` more tokens in ``max_positions``."""
    check_prompts(prompts)
    encoded = [chat_prompt_ids(tokenizer, messages, **template_kwargs) for _, messages in prompts]
    for (prompt_id, _), ids in zip(prompts, encoded):
        if max_positions is not None and len(ids) + max_new_tokens > max_positions:
            raise ValueError(
                f"prompt {prompt_id!r} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                f"it exceeds the model's {max_positions} positions: lower max_new_tokens or shorten the prompt"
            )
    return encoded


def resolve_stop_ids(tokenizer_eos: int | None, checkpoint_eos: int | Sequence[int] | None) -> list[int]:
    """Ids that end a completion: the tokenizer's eos, then the checkpoint generation config's.

    Qwen chat models list ``<|im_end|>`` and ``<|endoftext|>`` in ``generation_config.json``;
    vLLM stops on both, and so do our engines. Order kept, duplicates dropped.
    """
    if checkpoint_eos is None:
        checkpoint_eos = []
    elif isinstance(checkpoint_eos, int):
        checkpoint_eos = [checkpoint_eos]
    ids = ([tokenizer_eos] if tokenizer_eos is not None else []) + [int(i) for i in checkpoint_eos]
    if not ids:
        raise ValueError("neither the tokenizer nor generation_config.json names an eos token")
    return list(dict.fromkeys(ids))
