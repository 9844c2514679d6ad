"""The :class:`caopd.memory.ModelShape` of a configured model, read without loading weights.

The model is built on PyTorch's ``meta`` device from its ``config.json`` (a local directory, a
model in the local Hugging Face cache, or the embedded tiny model's settings), so an 8B model is
counted exactly in about a second and no byte of its weights is read or allocated. LoRA adapter
parameters are counted on the same meta model: ``r · (in + out)`` for every ``nn.Linear`` whose
name ends with one of ``model.lora.target_modules`` (PEFT's matching of a plain suffix list).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.memory import ModelShape, lora_targets


def model_config(model_cfg: Mapping[str, Any]):
    """The ``transformers`` config of ``model.source`` (never downloads).

    Raises:
        FileNotFoundError: the source is neither a local model directory nor in the local cache.
    """
    from transformers import AutoConfig, Qwen2Config

    source = model_cfg["source"]
    if source == "tiny":
        tiny = model_cfg["tiny"]
        return Qwen2Config(
            vocab_size=tiny["vocab_size"], hidden_size=tiny["hidden_size"],
            intermediate_size=tiny["intermediate_size"], num_hidden_layers=tiny["num_layers"],
            num_attention_heads=tiny["num_heads"], num_key_value_heads=tiny["num_kv_heads"],
            max_position_embeddings=tiny["max_positions"], tie_word_embeddings=True,
        )
    from caopd.sources import cached_snapshot

    path = Path(source)
    if not (path / "config.json").is_file():
        path = cached_snapshot(source, model_cfg.get("revision"))
        if path is None:
            raise FileNotFoundError(f"model.source {source!r}: no config.json locally or in the hub cache")
    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def model_shape(model_cfg: Mapping[str, Any]) -> ModelShape:
    """Parameter count and widths of ``model.source`` (tied weights once), LoRA adapters counted."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    config = model_config(model_cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once
    targets = lora_targets(model_cfg.get("lora"))
    lora_params = 0
    if targets:
        r = model_cfg["lora"]["r"]
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
                lora_params += r * (module.in_features + module.out_features)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelShape(
        n_params=n_params, n_layers=config.num_hidden_layers, hidden=config.hidden_size,
        q_width=heads * head_dim, kv_width=kv_heads * head_dim,
        intermediate=config.intermediate_size, vocab=config.vocab_size, lora_params=lora_params,
    )
