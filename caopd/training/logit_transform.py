"""The final transform a model family applies to ``lm_head(h)`` before its logits (DESIGN §10).

The distill loss builds logits itself from final hidden states and the LM head, chunk by chunk
(:mod:`caopd.training.loss`), so it must apply what the family's ``*ForCausalLM.forward`` applies
after the LM head, or its divergence is of other distributions than the model's. Read from the
``transformers`` modeling code (v5):

=================================================  ================================================
family (``config.model_type``)                     logits = f(y), y = lm_head(h)
=================================================  ================================================
gemma2, gemma3_text, vaultgemma                    ``c · tanh(y / c)``, c = ``final_logit_softcapping``
                                                   (no transform when it is None)
cohere, cohere2                                    ``y · logit_scale``
granite, granitemoe, granitemoeshared              ``y / logits_scaling``
llama, mistral, mixtral, qwen2, qwen2_moe, qwen3,  ``y``
qwen3_moe, olmo, olmo2, olmo3, phi3, gemma,
smollm3
=================================================  ================================================

Any other family is refused by name (:class:`UnsupportedModelFamily`): its forward may transform
the logits (or the hidden states before the head) in a way this table does not know. Adding a
family means reading its ``*ForCausalLM.forward`` and adding a row here and a case to
``tests/test_logit_transform.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class UnsupportedModelFamily(ValueError):
    """The loss does not know the final logit transform of this model family."""


@dataclass(frozen=True)
class LogitTransform:
    """``z = f(y)`` applied elementwise to the LM head's output ``y`` (one row per position).

    ``f(y) = softcap · tanh(scale · y / softcap)`` when ``softcap`` is set, else ``scale · y``.

    Attributes:
        scale: multiplier of ``y`` (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``);
            finite and > 0.
        softcap: Gemma's ``final_logit_softcapping`` c > 0, or None for no soft-capping.

    Raises:
        ValueError: a non-positive or non-finite ``scale`` or ``softcap``.
    """

    scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"logit scale={self.scale!r} must be finite and > 0")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"logit softcap={self.softcap!r} must be finite and > 0 (or None)")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def apply(self, y: Tensor) -> Tensor:
        """``f(y)``, out of place, in the order the model code applies it (Tensor[..., V])."""
        z = y * self.scale if self.scale != 1.0 else y
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def apply_(self, y: Tensor) -> Tensor:
        """``f(y)`` in place on ``y`` (no temporary of ``y``'s size); returns ``y``."""
        if self.scale != 1.0:
            y.mul_(self.scale)
        if self.softcap is not None:
            y.div_(self.softcap).tanh_().mul_(self.softcap)
        return y

    def derivative_from_output_(self, z: Tensor) -> Tensor:
        """Overwrite ``z = f(y)`` with ``f'(y)``, in place; returns ``z``.

        ``f'(y) = scale · (1 − tanh²) = scale · (1 − (z / softcap)²)`` with soft-capping, else
        ``scale`` (d/dx tanh x = 1 − tanh² x), so the derivative needs only the output ``z``.
        """
        if self.softcap is not None:
            z.div_(self.softcap).square_().neg_().add_(1.0)
            if self.scale != 1.0:
                z.mul_(self.scale)
        else:
            z.fill_(self.scale)
        return z


IDENTITY = LogitTransform()


def _softcap(config: Any) -> LogitTransform:
    cap = getattr(config, "final_logit_softcapping", None)
    return IDENTITY if cap is None else LogitTransform(softcap=float(cap))


def _cohere(config: Any) -> LogitTransform:
    return LogitTransform(scale=float(config.logit_scale))


def _granite(config: Any) -> LogitTransform:
    return LogitTransform(scale=1.0 / float(config.logits_scaling))


def _identity(config: Any) -> LogitTransform:
    return IDENTITY


#: ``model_type`` -> how to read the family's transform from its (text) config.
FAMILIES: dict[str, Callable[[Any], LogitTransform]] = {
    **{name: _softcap for name in ("gemma2", "gemma3_text", "vaultgemma")},
    **{name: _cohere for name in ("cohere", "cohere2")},
    **{name: _granite for name in ("granite", "granitemoe", "granitemoeshared")},
    **{
        name: _identity
        for name in (
            "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "olmo",
            "olmo2", "olmo3", "phi3", "gemma", "smollm3",
        )
    },
}


def logit_transform_for(config: Any) -> LogitTransform:
    """The final logit transform of a ``transformers`` causal-LM config (module table).

    Args:
        config: a ``PretrainedConfig`` (or anything with ``model_type`` and the family's fields).

    Raises:
        UnsupportedModelFamily: ``config.model_type`` is not in :data:`FAMILIES`; the message
            names the family and lists the supported ones.
    """
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise UnsupportedModelFamily(
            f"model family {family!r}: the distill loss does not know the final transform its "
            f"forward applies to the LM head's output; supported families: {sorted(FAMILIES)} "
            "(see caopd.training.logit_transform to add one)"
        )
    return FAMILIES[family](config)
