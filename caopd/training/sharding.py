"""FSDP2 for the distill loop (``distill.sharding: fsdp2``, DESIGN §10): sharded student and
teacher, sharded checkpoints, one gathered ``save_pretrained`` at the end.

accelerate launches the processes and owns the process group (gloo on CPU, NCCL on CUDA) with a
``MULTI_GPU`` config (``config/accelerate/fsdp.yaml`` on GPUs, ``cpu_ddp.yaml`` on CPU); the
sharding itself is torch's FSDP2 applied here, because accelerate 1.15 runs FSDP on GPUs only
and wraps the whole model, while the loop calls the inner decoder and the LM head itself:

- :func:`shard_model`: one ``fully_shard`` unit per decoder layer (the classes the model lists in
  ``_no_split_modules``, as accelerate's transformer-based wrap), then the root unit with the
  rest (embeddings, final norm, LM head; tied weights stay one parameter). The root is a module
  whose forward the loop calls and that holds the whole model: the student's
  :class:`~caopd.training.objective.StudentObjective` (decoder and loss, so the LM-head weight the
  loss reads stays gathered from the forward to the backward), the teacher's
  :class:`TeacherRoot` (its decoder). Every parameter is split on dim 0 over the processes
  (``Shard(0)`` DTensor), so student and teacher hold the same slice of each parameter and the
  EMA runs on local tensors (:mod:`caopd.training.ema`);
- the student is never handed to ``accelerator.prepare`` (that would wrap it in DDP); the
  objective's forward runs under ``accelerator.autocast()`` instead (bf16 on CUDA as with DDP);
- gradients are averaged by FSDP's reduce-scatter as DDP averages them, so the loss normaliser
  (:func:`caopd.training.loss.normalise_by_tokens`) is unchanged; ``clip_grad_norm_`` of torch
  runs on the DTensor gradients and returns a replicated DTensor (:func:`local_value`);
- checkpoints: ``torch.distributed.checkpoint`` of the sharded model, teacher and optimizer state
  dicts (:func:`save_sharded`, :func:`load_sharded`), each process writing its shards;
- the output: full state dicts gathered on the main process (:func:`gather_full`) and loaded into
  an unsharded copy of the model that ``save_pretrained`` writes, so the artifact has the same
  files as an unsharded run's. The optimizer state there is the unsharded id-keyed state dict of
  ``torch.optim`` (:func:`fqn_to_id_optimizer_state`), so the next round loads it sharded or not.

Sources: torch ``torch.distributed.fsdp.fully_shard`` (FSDP2) and
``torch.distributed.checkpoint.state_dict`` (``get_state_dict`` / ``set_state_dict`` with
``StateDictOptions``) docs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: The sub-directory of a checkpoint that holds the ``torch.distributed.checkpoint`` shards.
SHARDED = "sharded"


def is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_value(tensor: Any) -> Any:
    """A DTensor's local tensor (a parameter's shard, a replicated norm), anything else as is."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers: modules whose class is in ``model._no_split_modules``.

    Raises:
        ValueError: the model names no such class, or none is in it.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} lists no decoder layer class in _no_split_modules ({sorted(names)}): "
            "distill.sharding: fsdp2 shards one unit per decoder layer"
        )
    return layers


def shard_model(model: nn.Module, root: nn.Module, mesh: Any) -> nn.Module:
    """FSDP2 units of a causal LM ``model`` in place: one per decoder layer, then ``root`` (a
    module holding ``model`` whose forward the loop calls; module docstring). Returns ``root``.

    Call before building the optimizer: the parameters become new ``DTensor`` parameters.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


class TeacherRoot(nn.Module):
    """The sharded teacher: the FSDP root around a causal LM whose decoder the loop calls.

    What the loop reads of a teacher: ``base_model`` (calls the root, so FSDP gathers the
    embeddings and the norm; has the decoder's ``forward`` for signature checks),
    ``get_output_embeddings()``; ``model`` is the causal LM (its parameter names are the
    student's, for the EMA and the state dicts).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.base_model(*args, **kwargs)

    @property
    def base_model(self) -> Any:  # type: ignore[override]
        return _Decoder(self, self.model.base_model.forward)

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()


class _Decoder:
    """Calls the root; ``forward`` is the decoder's (``prefix._cache_argument`` reads it)."""

    def __init__(self, root: nn.Module, forward: Any) -> None:
        self.root, self.forward = root, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.root(*args, **kwargs)


def causal_lm(module: nn.Module) -> nn.Module:
    """The causal LM of a :class:`TeacherRoot` (or the module itself)."""
    return module.model if isinstance(module, TeacherRoot) else module


def device_mesh(accelerator: Any) -> Any:
    """A 1-D mesh over the accelerate processes on their device type (cpu: gloo, cuda: NCCL).

    Raises:
        ValueError: a single process (nothing to shard over).
    """
    from torch.distributed.device_mesh import init_device_mesh

    if accelerator.num_processes < 2:
        raise ValueError("distill.sharding: fsdp2 needs distill.processes > 1")
    return init_device_mesh(accelerator.device.type, (accelerator.num_processes,))


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of ``model``'s FSDP units (a no-grad forward leaves the root
    gathered: FSDP2 keeps the root unsharded after forward for the backward)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def head_weights(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The LM head's full weight Tensor[V, H] and bias Tensor[V] or None, gathered from the
    shards (a collective: every process calls it at the same point). Used for the teacher, whose
    head is read outside any forward."""
    reshard(model)
    head = causal_lm(model).get_output_embeddings()
    weight, bias = head.weight, head.bias
    full = [t.full_tensor() if is_dtensor(t) else t for t in (weight, bias) if t is not None]
    return full[0], (full[1] if bias is not None else None)


def autocast_forward(module: nn.Module, accelerator: Any) -> None:
    """Run ``module``'s forward under ``accelerator.autocast()`` (what ``accelerator.prepare``
    does for a model it is given; a sharded model is not given to it)."""
    forward = module.forward

    def autocast(*args: Any, **kwargs: Any) -> Any:
        with accelerator.autocast():
            return forward(*args, **kwargs)

    module.forward = autocast  # type: ignore[method-assign]


# --- state dicts --------------------------------------------------------------------------------


def _options(full: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def sharded_state(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``{"student", "teacher", "optimizer"}`` sharded state dicts (DTensor values, FQN keys)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    reshard(student)
    reshard(teacher)
    return {
        "student": get_model_state_dict(student),
        "teacher": get_model_state_dict(causal_lm(teacher)),
        "optimizer": get_optimizer_state_dict(student, optimizer),
    }


def save_sharded(directory: Path, student: nn.Module, teacher: nn.Module, optimizer) -> None:
    """Every process writes its shards of student, teacher and optimizer to ``directory``
    (``torch.distributed.checkpoint``: one ``__<rank>_0.distcp`` file each and ``.metadata``)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(sharded_state(student, teacher, optimizer), checkpoint_id=str(directory))


def load_sharded(directory: Path, student: nn.Module, teacher: nn.Module, optimizer) -> None:
    """Inverse of :func:`save_sharded` into freshly sharded modules and a fresh optimizer
    (the optimizer's state is created by ``get_optimizer_state_dict`` and then overwritten)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = sharded_state(student, teacher, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    set_model_state_dict(student, state["student"])
    set_model_state_dict(causal_lm(teacher), state["teacher"])
    set_optimizer_state_dict(student, optimizer, state["optimizer"])


def gather_full(model: nn.Module) -> dict[str, Tensor]:
    """The full model state dict on the main process (CPU tensors), empty on the others."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    return get_model_state_dict(causal_lm(model), options=_options(True))


def gather_full_optimizer(model: nn.Module, optimizer) -> dict[str, Any]:
    """The optimizer's full state dict (FQN keys) on the main process, empty on the others."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(True))


def fqn_to_id_optimizer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """An FQN-keyed optimizer state dict as ``torch.optim``'s own (parameters numbered in the
    order of the param groups), the format of an unsharded run's ``optimizer.pt``."""
    flat = [fqn for group in state["param_groups"] for fqn in group["params"]]
    index = {fqn: i for i, fqn in enumerate(flat)}
    return {
        "state": {index[fqn]: value for fqn, value in state["state"].items()},
        "param_groups": [dict(g, params=[index[f] for f in g["params"]]) for g in state["param_groups"]],
    }


def load_full_optimizer_state(model: nn.Module, optimizer, state: Mapping[str, Any]) -> None:
    """Load an unsharded id-keyed optimizer state dict (:func:`fqn_to_id_optimizer_state`, or an
    unsharded run's ``optimizer.pt``) into the optimizer of the sharded ``model``; every process
    passes the whole dict.

    Raises:
        ValueError: the param groups differ in size from the optimizer's.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    template = get_optimizer_state_dict(model, optimizer)
    names = [group["params"] for group in template["param_groups"]]
    saved = [group["params"] for group in state["param_groups"]]
    if [len(n) for n in names] != [len(s) for s in saved]:
        raise ValueError(
            f"the saved optimizer has param groups of {[len(s) for s in saved]} parameters, this "
            f"student {[len(n) for n in names]}"
        )
    flat = [fqn for group in names for fqn in group]
    by_id = {i: fqn for i, fqn in enumerate(flat)}
    fqn_state = {
        "state": {by_id[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [dict(g, params=list(n)) for g, n in zip(state["param_groups"], names)],
    }
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    set_optimizer_state_dict(model, optimizer, fqn_state, options=StateDictOptions(full_state_dict=True))
