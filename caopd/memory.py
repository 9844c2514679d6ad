"""Per-GPU memory of a distill job, estimated from the config before anything runs (DESIGN §10).

The distill loop holds, on every process:

- the student's fp32 master weights, their fp32 gradients and AdamW's two fp32 moments (only the
  trainable parameters have gradients and moments: the LoRA adapters when ``model.lora`` is set);
- the teacher, a whole fp32 model (the frozen initial student or the EMA-updated copy), and with
  ``distill.teacher: ema`` the fp32 EMA shadow of the trainable parameters
  (:mod:`caopd.training.ema`); with LoRA the teacher shares the frozen base weights and holds its
  own adapters only;
- the activations the backward needs for one micro-batch, and the fp32 logits of one
  ``distill.chunk_size`` chunk of positions (:mod:`caopd.training.fused_divergence`).

``distill.sharding: fsdp2`` divides every per-parameter term (weights, gradients, moments,
teacher, shadow) by the number of processes; DDP (``none``) keeps them whole on every GPU.

Activations: with bf16 autocast a Qwen/Llama decoder layer saves, per token, about
``6h + 2·h_q + 2·h_kv + 4·I`` bf16 values for the backward (the two norms' inputs and outputs,
q/k/v and the attention output, the MLP's gate, up, activation and product; SDPA or flash
attention keep no ``s × s`` matrix): Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", §4, adapted to SwiGLU and grouped-query attention. Gradient
checkpointing keeps each layer's input (``h`` values per token) and recomputes one layer at a
time. fp32 (CPU, no autocast) doubles the bytes per value.

This is an estimate for refusing layouts that cannot fit, not a measurement: the CUDA context,
allocator fragmentation and communication buffers are covered by keeping :data:`HEADROOM` of the
declared memory free. ``benchmarks/gpu_check.py`` prints the planner's figure beside the measured
peak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Fraction of the declared GPU memory the planner leaves free (context, fragmentation, NCCL).
HEADROOM = 0.10
GIB = 1024 ** 3
FP32 = 4
BF16 = 2


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a causal LM.

    Attributes:
        n_params: parameters (tied weights counted once).
        n_layers: decoder layers.
        hidden: hidden size ``h``.
        q_width: query width ``n_heads · head_dim`` (``h_q``).
        kv_width: key (= value) width ``n_kv_heads · head_dim`` (``h_kv``).
        intermediate: MLP width ``I``.
        vocab: vocabulary size ``V``.
        lora_params: trainable parameters of the configured LoRA adapters (0 without LoRA).
    """

    n_params: int
    n_layers: int
    hidden: int
    q_width: int
    kv_width: int
    intermediate: int
    vocab: int
    lora_params: int = 0


@dataclass(frozen=True)
class Layout:
    """How a distill job lays the model out (from the ``distill`` and ``model`` blocks).

    Attributes:
        processes: processes (GPUs) of the job.
        sharded: FSDP2 over the processes (``distill.sharding: fsdp2``).
        lora: only adapters train (``model.lora`` set).
        gradient_checkpointing: layers recomputed in the backward.
        ema: the teacher is an EMA of the student (an fp32 shadow is kept).
        micro_batch: sequences per process per micro-step (``ceil(batch_size / processes)``).
        seq_len: positions of a student sequence (prompt + completion limits).
        chunk_size: positions per chunk of the fp32 divergence.
        autocast_bf16: activations in bf16 (CUDA) rather than fp32.
    """

    processes: int
    sharded: bool
    lora: bool
    gradient_checkpointing: bool
    ema: bool
    micro_batch: int
    seq_len: int
    chunk_size: int
    autocast_bf16: bool = True


def activation_values_per_token_layer(shape: ModelShape) -> int:
    """Values one decoder layer saves per token for the backward (module docstring)."""
    return 6 * shape.hidden + 2 * shape.q_width + 2 * shape.kv_width + 4 * shape.intermediate


def memory_breakdown(shape: ModelShape, layout: Layout) -> dict[str, int]:
    """Bytes per GPU of each part of a distill job.

    Returns:
        ``{"weights", "gradients", "optimizer", "teacher", "ema_shadow", "activations",
        "logit_chunk"}`` in bytes (ints), for one process.
    """
    shards = layout.processes if layout.sharded else 1
    trainable = shape.lora_params if layout.lora else shape.n_params
    per_shard = lambda n: math.ceil(n / shards)  # noqa: E731 - local shorthand
    value = BF16 if layout.autocast_bf16 else FP32
    tokens = layout.micro_batch * layout.seq_len
    if layout.gradient_checkpointing:
        acts = tokens * shape.hidden * shape.n_layers + tokens * activation_values_per_token_layer(shape)
    else:
        acts = tokens * activation_values_per_token_layer(shape) * shape.n_layers
    teacher = trainable if layout.lora else shape.n_params  # LoRA: the teacher's own adapters
    return {
        "weights": FP32 * per_shard(shape.n_params),
        "gradients": FP32 * per_shard(trainable),
        "optimizer": 2 * FP32 * per_shard(trainable),
        "teacher": FP32 * per_shard(teacher),
        "ema_shadow": FP32 * per_shard(trainable) if layout.ema else 0,
        "activations": value * acts,
        # student logits, teacher logits, the softmax and the logit gradient of one chunk, fp32
        "logit_chunk": 4 * FP32 * layout.micro_batch * min(layout.chunk_size, layout.seq_len) * shape.vocab,
    }


def fits(breakdown: Mapping[str, int], gpu_memory_gb: float) -> bool:
    """Whether ``breakdown`` fits ``(1 − HEADROOM) · gpu_memory_gb`` GiB."""
    return sum(breakdown.values()) <= (1 - HEADROOM) * gpu_memory_gb * GIB


def advice(shape: ModelShape, layout: Layout, gpu_memory_gb: float) -> list[str]:
    """What to change so that the layout fits: each suggestion is checked with the planner.

    Returns:
        Sentences naming config keys, the ones that make it fit first; empty when nothing tried
        fits (then fewer parameters or a larger GPU is the only way).
    """
    tries: list[tuple[str, Layout]] = []
    if not layout.sharded or layout.processes < 8:
        gpus = max(8, layout.processes)
        tries.append((f"shard over {gpus} GPUs (distill.processes: {gpus}, distill.sharding: fsdp2)",
                      _replace(layout, processes=gpus, sharded=True,
                               micro_batch=math.ceil(layout.micro_batch * layout.processes / gpus))))
    if not layout.lora:
        tries.append(("train LoRA adapters (model.lora, e.g. r: 64, alpha: 128)", _replace(layout, lora=True)))
    if not layout.gradient_checkpointing:
        tries.append(("turn on distill.gradient_checkpointing", _replace(layout, gradient_checkpointing=True)))
    if layout.seq_len > 1024:
        tries.append((f"shorten the sequences ({layout.seq_len} -> 1024 positions: "
                      "rewrite.max_prompt_length + rewrite.max_completion_length)",
                      _replace(layout, seq_len=1024)))
    if layout.micro_batch > 1:
        tries.append(("fewer sequences per micro-step (distill.batch_size down, distill.grad_accum up)",
                      _replace(layout, micro_batch=1)))
    out = [text for text, tried in tries if fits(memory_breakdown(shape, tried), gpu_memory_gb)]
    if not out and len(tries) > 1:
        combined = layout
        for _, tried in tries:
            combined = _replace(combined, **{k: v for k, v in asdict(tried).items()
                                             if v != getattr(layout, k)})
        if fits(memory_breakdown(shape, combined), gpu_memory_gb):
            out.append("all of: " + "; ".join(text for text, _ in tries))
    return out


def _replace(layout: Layout, **changes: Any) -> Layout:
    return Layout(**{**asdict(layout), **changes})


def format_breakdown(breakdown: Mapping[str, int], gpu_memory_gb: float | None = None) -> str:
    """A two-column table of ``breakdown`` in GiB, its total and (given) the budget."""
    lines = [f"{name:<12} {bytes_ / GIB:10.2f} GiB" for name, bytes_ in breakdown.items()]
    total = sum(breakdown.values())
    lines.append(f"{'total':<12} {total / GIB:10.2f} GiB")
    if gpu_memory_gb is not None:
        budget = (1 - HEADROOM) * gpu_memory_gb
        lines.append(f"{'budget':<12} {budget:10.2f} GiB  ({gpu_memory_gb:g} GiB less {HEADROOM:.0%} headroom)")
    return "\n".join(lines)


def layout_of(cfg: Mapping[str, Any], *, cuda: bool = True) -> Layout:
    """The :class:`Layout` of a resolved variant config."""
    distill, rewrite = cfg["distill"], cfg["rewrite"]
    processes = distill["processes"]
    return Layout(
        processes=processes,
        sharded=distill["sharding"] == "fsdp2",
        lora=cfg["model"]["lora"] is not None,
        gradient_checkpointing=distill["gradient_checkpointing"],
        ema=distill["teacher"] == "ema",
        micro_batch=math.ceil(distill["batch_size"] / processes),
        seq_len=rewrite["max_prompt_length"] + rewrite["max_completion_length"],
        chunk_size=distill["chunk_size"],
        autocast_bf16=cuda,
    )


def lora_targets(lora: Mapping[str, Any] | None) -> Sequence[str]:
    """The module-name suffixes ``model.lora.target_modules`` names (empty without LoRA)."""
    return tuple(lora["target_modules"]) if lora else ()
