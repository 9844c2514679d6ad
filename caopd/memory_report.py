"""``caopd memory``: the per-GPU memory estimate of each training variant of a config file.

    caopd memory --configfile config/presets/qwen3_8b_science.yaml
    caopd memory --configfile config/presets/qwen3_8b_science.yaml --processes 1 --gpu-memory-gb 80
    caopd memory --configfile X --model /path/to/model_dir     # another model.source

Prints, for every variant that trains, the breakdown of :func:`caopd.memory.memory_breakdown`
(weights, gradients, optimizer, teacher, EMA shadow, activations, one logit chunk) for the
configured layout (``distill.processes``, ``distill.sharding``, ``model.lora``,
``distill.gradient_checkpointing``) on CUDA (bf16 activations). With a budget (``--gpu-memory-gb``
or ``distill.gpu_memory_gb``) it says whether the job fits and, when not, what would; the exit
status is then 2. The options override the config for this estimate only.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import yaml

from caopd.config import ConfigError, deep_merge, resolve


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    distill: dict[str, Any] = {}
    if args.processes is not None:
        distill["processes"] = args.processes
        if args.processes == 1:
            distill["sharding"] = "none"  # nothing to shard over
    if args.gpu_memory_gb is not None:
        distill["gpu_memory_gb"] = args.gpu_memory_gb
    out: dict[str, Any] = {"distill": distill} if distill else {}
    if args.model is not None:
        out["model"] = {"source": args.model}
    return out


def run(args: argparse.Namespace) -> int:
    """Print the estimate of every training variant; 2 when one does not fit its budget."""
    from caopd.memory import advice, fits, format_breakdown, layout_of, memory_breakdown
    from caopd.models.shape import model_shape

    with open(args.configfile, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    raw = deep_merge(raw, _overrides(args))
    raw["variants"] = {name: deep_merge(over or {}, _overrides(args))
                       for name, over in (raw.get("variants") or {}).items()}
    try:
        variants = resolve(raw, check_disk=False)["variants"]
    except ConfigError as err:
        print(err)
        return 2
    status, shapes, groups = 0, {}, {}
    for name, cfg in variants.items():
        if cfg["distill"]["rounds"] == 0:
            continue
        source = cfg["model"]["source"], repr(cfg["model"]["lora"])
        shape = shapes.get(source) or shapes.setdefault(source, model_shape(cfg["model"]))
        group = (shape, layout_of(cfg), cfg["distill"]["gpu_memory_gb"], cfg["distill"]["sharding"])
        groups.setdefault(group, []).append(name)
    for (shape, layout, budget, sharding), names in groups.items():
        breakdown = memory_breakdown(shape, layout)
        print(f"variants {', '.join(names)}: {shape.n_params / 1e9:.2f}B parameters, "
              f"{layout.processes} process(es), sharding {sharding}, lora {'on' if layout.lora else 'off'}, "
              f"gradient checkpointing {'on' if layout.gradient_checkpointing else 'off'}, "
              f"{layout.micro_batch} x {layout.seq_len} positions per micro-step")
        print(format_breakdown(breakdown, budget))
        if budget is not None:
            if fits(breakdown, budget):
                print("fits\n")
            else:
                status = 2
                fixes = advice(shape, layout, budget)
                print("does not fit; what would: " + (" | ".join(fixes) if fixes else
                      "no single change: a smaller model or larger GPUs") + "\n")
    return status


def memory_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why the variant's distill job cannot fit ``distill.gpu_memory_gb`` per GPU, or None
    (imports torch and transformers to count the model on the meta device)."""
    from caopd.memory import advice, fits, format_breakdown, layout_of, memory_breakdown
    from caopd.models.shape import model_shape

    budget = cfg["distill"]["gpu_memory_gb"]
    shape, layout = model_shape(cfg["model"]), layout_of(cfg)
    breakdown = memory_breakdown(shape, layout)
    if fits(breakdown, budget):
        return None
    fixes = advice(shape, layout, budget)
    return (
        f"the distill job needs about {sum(breakdown.values()) / 1024 ** 3:.1f} GiB per GPU, more than "
        f"{budget:g} GiB allows:\n{format_breakdown(breakdown, budget)}\n"
        + ("what would fit: " + " | ".join(fixes) if fixes else
           "no single change fits: a smaller model or larger GPUs")
    )


def check_memory(variants: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, at plan time, a training variant whose distill job cannot fit the GPU memory it
    declares (``distill.gpu_memory_gb``; variants without it are not checked). Called by the
    Snakefile after :func:`caopd.config.resolve`; not part of any stage's code.

    Raises:
        ConfigError: naming the variant and the key, with the breakdown and what would fit.
    """
    for name, cfg in variants.items():
        if cfg["distill"]["gpu_memory_gb"] is not None and cfg["distill"]["rounds"] > 0:
            problem = memory_problem(cfg)
            if problem:
                raise ConfigError(f"variant '{name}': key 'distill.gpu_memory_gb': {problem}")


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``caopd memory``."""
    parser = subparsers.add_parser("memory", help="per-GPU memory estimate of a config's distill jobs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", required=True, help="a whole config file (YAML)")
    parser.add_argument("--processes", type=int, help="override distill.processes (1: also sharding none)")
    parser.add_argument("--gpu-memory-gb", type=float, help="override distill.gpu_memory_gb (GiB per GPU)")
    parser.add_argument("--model", help="override model.source (a local model directory or hub id)")
    parser.set_defaults(handler=run)
