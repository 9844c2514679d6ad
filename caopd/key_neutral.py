"""Settings that enter a stage's key only when they change what the stage computes (DESIGN §4).

A setting added after the default's draws were measured stays out of the key at its neutral
value, where the stage computes exactly what it computed before the setting existed, and where
another setting makes it unread (``kl_mix_lambda`` outside ``kl_mix``). So a config that uses
none of them keeps its keys, its stage seeds and its bytes, and adding a setting never reruns the
runs it does not touch. :data:`KEY_NEUTRAL` is the one table of them; :func:`key_params` applies
it where :mod:`caopd.plan` builds each stage's params. Like :mod:`caopd.plan`, imported by the
Snakefile: no heavy imports.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

#: ``neutral(value, block)``: whether a setting's ``value``, in its config ``block``, leaves the
#: stage computing what it computed before the setting existed.
Neutral = Callable[[Any, Mapping[str, Any]], bool]


def at(neutral_value: Any) -> Neutral:
    """Neutral at ``neutral_value``."""

    def neutral(value: Any, block: Mapping[str, Any]) -> bool:
        return value == neutral_value

    return neutral


def off(value: Any, block: Mapping[str, Any]) -> bool:
    """Neutral at any false value (0, ``None``)."""
    return not value


def unread_unless(other: str, reading: Any) -> Neutral:
    """Neutral unless the block's ``other`` setting is ``reading`` (otherwise nothing reads it)."""

    def neutral(value: Any, block: Mapping[str, Any]) -> bool:
        return block.get(other) != reading

    return neutral


#: config block -> setting -> when it stays out of the key. Every setting is neutral at the
#: default config's value (tests/test_config.py checks it), so the default keeps its keys.
KEY_NEUTRAL: dict[str, dict[str, Neutral]] = {
    "distill": {  # issue 18
        "estimator": at("full_vocab"),
        "vopd_top_k": at(0),
        "length_curriculum": at(None),
        "kl_mix_lambda": unread_unless("divergence", "kl_mix"),
    },
    "evaluation": {  # the vLLM engine (issue 15): hf's keys and draws predate it
        "engine": at("hf"),
        "tensor_parallel_size": unread_unless("engine", "vllm"),
    },
    "model.tiny.warmup": {  # issue 12
        "induction_lr_warmup": off,
    },
}


def key_params(block: str, settings: Mapping[str, Any], leave_out: Collection[str] = ()) -> dict[str, Any]:
    """``settings`` (a config block, e.g. ``cfg["distill"]``) without the settings that
    :data:`KEY_NEUTRAL` ``[block]`` finds neutral, nor those named in ``leave_out``.

    Raises:
        KeyError: ``block`` is not in :data:`KEY_NEUTRAL`.
    """
    table = KEY_NEUTRAL[block]
    return {
        name: value for name, value in settings.items()
        if name not in leave_out and not (name in table and table[name](value, settings))
    }
