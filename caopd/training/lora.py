"""LoRA through PEFT for the distill loop (``model.lora``, DESIGN §10).

- the student is ``peft.get_peft_model(base, LoraConfig(...))``: only the adapters (``lora_A``,
  ``lora_B`` of the ``target_modules``) require grad, so the optimizer holds only them; the loop
  trains ``peft_model.get_base_model()`` (the transformers model with the LoRA layers injected);
- the teacher shares the frozen base weights with the student (no copy): it is the same modules
  with the teacher's adapter values in place of the student's (:class:`LoraTeacher` swaps the
  tensors behind the adapter parameters for the length of a no-grad, eval-mode forward). Its
  adapter values start as the student's (``lora_B`` = 0: the base model itself); with
  ``distill.teacher: ema`` they are the fp32 EMA of the student's adapters (:class:`LoraEma`,
  ``shadow ← (1 − w)·shadow + w·adapter`` on the adapter tensors only), with ``frozen`` they
  never move;
- the artifact: ``adapter/`` (PEFT ``save_pretrained`` of the student's adapter) and
  ``adapter/teacher/`` (the teacher's), and the usual ``student/`` and ``teacher/`` model
  directories holding the merged weights (``merge_and_unload`` of the base plus the adapter), so
  evaluation and the rollouts load them unchanged;
- a resume checkpoint holds the adapter values only (``student/adapter.safetensors``,
  ``teacher/adapter.safetensors``); the base comes from the round's starting model again.

Trains one round (the teacher shares the round's base weights; a later round's student would be
another base): ``model.lora`` with ``distill.rounds > 1`` is refused when the config is loaded
(:func:`caopd.config.layout_problem`).

Sources: PEFT docs (``LoraConfig``, ``get_peft_model``, ``PeftModel.from_pretrained``,
``merge_and_unload``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from caopd.training.ema import EmaTeacher

#: The adapter directory of a distill artifact (the student's; the teacher's in ``teacher/`` in it).
ADAPTER = "adapter"
#: A checkpoint's adapter values, in its ``student/`` and ``teacher/`` directories.
ADAPTER_FILE = "adapter.safetensors"
#: PEFT's adapter name of the student's adapter.
STUDENT_ADAPTER = "default"


def lora_config(lora: Mapping[str, Any]) -> Any:
    """``peft.LoraConfig`` of the ``model.lora`` block ``{r, alpha, dropout, target_modules}``."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]), bias="none", task_type="CAUSAL_LM",
    )


def wrap_student(model: nn.Module, lora: Mapping[str, Any]) -> Any:
    """``get_peft_model(model, lora_config(lora))``: base frozen, adapters trainable.

    Raises:
        ValueError: PEFT's, when a target module is not in the model.
    """
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora))


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable adapter parameters of a LoRA-injected model by name (the base is frozen)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class AdapterView:
    """A module's adapter parameters as ``named_parameters()`` (what :class:`EmaTeacher` reads)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = adapter_parameters(model)

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.params.items())


class LoraTeacher:
    """The teacher: the student's modules with the teacher's adapter values (module docstring).

    Offers what the loop reads of a teacher: ``base_model`` (called with the decoder's arguments,
    has its ``forward`` for signature checks), ``get_output_embeddings()`` (the shared head,
    which LoRA does not target), ``named_parameters()`` (the adapter values, for the EMA).

    Attributes:
        model: the LoRA-injected student model (shared).
        adapters: adapter name -> fp32 Tensor, the teacher's values.
    """

    def __init__(self, model: nn.Module, adapters: dict[str, Tensor]) -> None:
        self.model = model
        self.adapters = adapters
        self.base_model = _Callable(self._forward, model.base_model.forward)

    @classmethod
    def of_student(cls, model: nn.Module) -> LoraTeacher:
        """A teacher whose adapters start as copies of the student's."""
        with torch.no_grad():
            return cls(model, {n: p.detach().float().clone() for n, p in adapter_parameters(model).items()})

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.adapters.items())

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The shared model in eval mode with the teacher's adapter values, under no_grad."""
        params = adapter_parameters(self.model)
        training = self.model.training
        saved = {name: p.data for name, p in params.items()}
        try:
            with torch.no_grad():
                self.model.eval()
                for name, p in params.items():
                    p.data = self.adapters[name].to(dtype=p.dtype, device=p.device)
                yield self.model
        finally:
            for name, p in params.items():
                p.data = saved[name]
            self.model.train(training)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.active() as model:
            return model.base_model(*args, **kwargs)


class _Callable:
    """A callable with a ``forward`` attribute (``prefix._cache_argument`` reads its signature)."""

    def __init__(self, call: Any, forward: Any) -> None:
        self._call, self.forward = call, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)


class LoraEma(EmaTeacher):
    """:class:`EmaTeacher` over the adapters: built from and updated by the student model's
    adapter parameters, copied into a :class:`LoraTeacher`'s adapter values."""

    def __init__(self, teacher: LoraTeacher) -> None:
        super().__init__(teacher)  # the teacher's adapters: names of the student's, fp32

    def update(self, student: nn.Module, weight: float) -> None:
        super().update(AdapterView(student), weight)  # type: ignore[arg-type]


def save_adapter_values(path: Path, values: Mapping[str, Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().float().contiguous().cpu() for n, t in values.items()}, str(path))


def load_adapter_values(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_checkpoint_models(peft_model: Any, teacher: LoraTeacher, directory: Path) -> None:
    """A checkpoint's ``student/adapter.safetensors`` and ``teacher/adapter.safetensors``."""
    save_adapter_values(directory / "student" / ADAPTER_FILE, adapter_parameters(peft_model.get_base_model()))
    save_adapter_values(directory / "teacher" / ADAPTER_FILE, teacher.adapters)


def restore_checkpoint_models(peft_model: Any, teacher: LoraTeacher, directory: Path) -> None:
    """Inverse of :func:`write_checkpoint_models`, in place.

    Raises:
        ValueError: adapter names or shapes differ from this student's.
    """
    params = adapter_parameters(peft_model.get_base_model())
    student = load_adapter_values(directory / "student" / ADAPTER_FILE)
    saved = load_adapter_values(directory / "teacher" / ADAPTER_FILE)
    if set(student) != set(params) or set(saved) != set(params):
        raise ValueError(f"{directory}: the checkpoint's adapters are not this student's (model.lora changed?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(student[name])
            teacher.adapters[name].copy_(saved[name])


def write_outputs(peft_model: Any, teacher: LoraTeacher, base_dir: Path, out: Path) -> None:
    """The artifact's ``adapter/``, ``adapter/teacher/`` and merged ``student/``, ``teacher/``.

    Args:
        peft_model: the trained PEFT student.
        teacher: its teacher (adapter values).
        base_dir: the model the round started from (the base the adapters apply to).
        out: the artifact directory.
    """
    peft_model.save_pretrained(out / ADAPTER)
    with teacher.active():
        peft_model.save_pretrained(out / ADAPTER / "teacher")
    for adapter, target in ((out / ADAPTER, out / "student"), (out / ADAPTER / "teacher", out / "teacher")):
        merged_model(base_dir, adapter).save_pretrained(target)


def merged_model(base_dir: Path, adapter_dir: Path) -> nn.Module:
    """The base model of ``base_dir`` (fp32) with the adapter of ``adapter_dir`` merged in."""
    from peft import PeftModel

    from caopd.training.state import load_causal_lm

    return PeftModel.from_pretrained(load_causal_lm(base_dir), str(adapter_dir)).merge_and_unload()
