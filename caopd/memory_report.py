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
from typing import Any

import yaml

from caopd.config import ConfigError, deep_merge, resolve


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    distill: dict[str, Any] = {}
    if args.processes is not None:
        distill["processes"] = args.processes
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


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``caopd memory``."""
    parser = subparsers.add_parser("memory", help="per-GPU memory estimate of a config's distill jobs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", required=True, help="a whole config file (YAML)")
    parser.add_argument("--processes", type=int, help="override distill.processes")
    parser.add_argument("--gpu-memory-gb", type=float, help="override distill.gpu_memory_gb (GiB per GPU)")
    parser.add_argument("--model", help="override model.source (a local model directory or hub id)")
    parser.set_defaults(handler=run)
