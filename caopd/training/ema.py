"""The EMA teacher: an fp32 shadow of the student's parameters.

DESIGN §1 step 4: the teacher is an exponential moving average of the student, updated with
weight ``w`` (0.01) after every optimizer step:

    shadow ← (1 − w) · shadow + w · float32(student_param)

The released reference code does this update in bf16 on the teacher's own weights; bf16 values
just above 1 are 2⁻⁷ ≈ 0.0078 apart, so any step smaller than about half of that rounds away and
the teacher stalls (DESIGN §2). Here the shadow is a float32 state dict kept apart from any
module, whatever the student's dtype, and the update runs in float32 under ``no_grad``;
:meth:`EmaTeacher.copy_to` casts it into the teacher module (bf16 or otherwise) for compute.

Only parameters are averaged (``named_parameters()``, tied weights once); buffers are left alone.
Initialise from the fp32 master weights where there are any, so the shadow starts exact.

Sharded (FSDP2, :mod:`caopd.training.sharding`) parameters are DTensors; the shadow then holds
each process's local shard and every update runs on local tensors (:func:`_local`), student and
teacher being sharded alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _local(tensor: Tensor) -> Tensor:
    """A sharded (DTensor) parameter's local shard; any other tensor itself (issue 15)."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _check_weight(weight: float) -> None:
    is_number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    if not (is_number and 0.0 < weight <= 1.0):
        raise ValueError(f"EMA weight={weight!r} must lie in (0, 1]")


class EmaTeacher:
    """An fp32 exponential moving average of a module's parameters.

    Args:
        module: the module whose parameters initialise the shadow (usually the student at the
            start of training, or the base model).
        device: where to keep the shadow; default each parameter's own device.

    The shadow is a ``dict[str, Tensor]`` of float32 tensors keyed by parameter name. Every
    method that takes a module checks that its parameter names and shapes match the shadow.
    """

    def __init__(self, module: nn.Module, device: torch.device | str | None = None) -> None:
        with torch.no_grad():
            self._shadow: dict[str, Tensor] = {
                name: _local(param).detach().to(
                    device=param.device if device is None else device,
                    dtype=torch.float32,
                    copy=True,
                )
                for name, param in module.named_parameters()
            }

    @property
    def names(self) -> list[str]:
        """Parameter names covered by the shadow, in the module's order."""
        return list(self._shadow)

    def _matched(self, module: nn.Module, role: str) -> list[tuple[Tensor, nn.Parameter]]:
        params = dict(module.named_parameters())
        missing = sorted(set(self._shadow) - set(params))
        unexpected = sorted(set(params) - set(self._shadow))
        if missing or unexpected:
            raise ValueError(
                f"{role} parameters do not match the EMA shadow: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        pairs = []
        for name, shadow in self._shadow.items():
            param = params[name]
            if _local(param).shape != shadow.shape:
                raise ValueError(
                    f"{role} parameter {name!r} has shape {tuple(param.shape)}, "
                    f"the EMA shadow {tuple(shadow.shape)}"
                )
            pairs.append((shadow, param))
        return pairs

    def update(self, student: nn.Module, weight: float) -> None:
        """``shadow ← (1 − weight)·shadow + weight·float32(param)`` for every student parameter.

        Runs in float32 under ``no_grad``, one parameter at a time (one temporary fp32 copy of a
        single bf16 parameter at most). ``weight = 1`` copies the student.

        Raises:
            ValueError: ``weight`` outside (0, 1], or parameters that do not match the shadow.
        """
        _check_weight(weight)
        with torch.no_grad():
            for shadow, param in self._matched(student, "student"):
                source = _local(param).detach().to(device=shadow.device, dtype=torch.float32)
                shadow.lerp_(source, float(weight))

    def copy_to(self, module: nn.Module) -> None:
        """Write the shadow into ``module``'s parameters, cast to each parameter's dtype/device.

        Raises:
            ValueError: parameters that do not match the shadow.
        """
        with torch.no_grad():
            for shadow, param in self._matched(module, "teacher"):
                _local(param).copy_(shadow)

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow as a flat ``{name: float32 tensor}`` dict of detached copies.

        Safetensors-ready (``safetensors.torch.save_file``).
        """
        return {name: shadow.detach().clone() for name, shadow in self._shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the shadow with ``state`` (as written by :meth:`state_dict`), kept in float32.

        Raises:
            ValueError: names or shapes that differ from the current shadow, or non-finite values.
        """
        missing = sorted(set(self._shadow) - set(state))
        unexpected = sorted(set(state) - set(self._shadow))
        if missing or unexpected:
            raise ValueError(
                f"EMA state dict does not match the shadow: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        loaded: dict[str, Tensor] = {}
        for name, shadow in self._shadow.items():
            tensor = state[name]
            if tensor.shape != shadow.shape:
                raise ValueError(
                    f"EMA state {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(shadow.shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise ValueError(f"EMA state {name!r} holds non-finite values")
            loaded[name] = tensor.detach().to(
                device=shadow.device, dtype=torch.float32, copy=True
            )
        self._shadow = loaded

