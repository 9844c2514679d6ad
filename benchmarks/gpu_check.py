"""The real-model path on one GPU, in one short run (issue 15 row 8): ~5 minutes on one H200.

    .venv/bin/python benchmarks/gpu_check.py --out /tmp/gpu_check          # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --out /tmp/gpu_check --cpu    # the CPU-only parts

Builds locally a random-init model of Qwen3-0.6B's shape (28 layers, hidden 1,024, MLP 3,072,
16 query / 8 key-value heads of 128; the vocabulary is that of the locally trained tokenizer,
nothing is downloaded), writes a config for it and runs the workflow's own DAG with Snakemake:

- ``rollouts``: vLLM, K = 8 samples of 64 arith prompts, 256 new tokens;
- ``distill``: one round, bf16 autocast, gradient checkpointing, declared
  ``distill.gpu_memory_gb`` (so the planner checks the layout at load); one process, unsharded
  (FSDP2 needs 2 processes, and two NCCL ranks cannot share one GPU: the sharded path is tested
  with 2 gloo processes on CPU, ``tests/test_distill_fsdp.py``);
- ``eval_rollouts``: vLLM, greedy, 256 questions; ``evaluate``: the calibration metrics.

Prints, per part, PASS/FAIL, tokens/s (rollouts, evaluation), optimizer steps/s and the distill
job's peak allocated GPU memory beside :mod:`caopd.memory`'s estimate for the same layout.
``--cpu`` runs the same DAG with the hf engine, fp32, no checkpointing and a 2-layer model of the same
family: what a machine without a GPU can check of this script. Exit status 0 when every part
passes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Qwen3-0.6B's architecture (its config.json), vocabulary aside.
QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128)
CPU_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)


def build_model(directory: Path, shape: dict, seed: int = 0) -> Path:
    """A random-init Qwen3 causal LM of ``shape`` with the project's locally trained tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from caopd.models.random_model import build_tiny_model

    build_tiny_model(directory, vocab_size=512, max_positions=4096, seed=seed)   # tokenizer (+ a placeholder)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, rope_theta=1000000.0, **shape)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(directory)
    return directory


def check_config(model: Path, cpu: bool) -> dict:
    engine = "hf" if cpu else "vllm"
    return {
        "seed": 0,
        "task": {"name": "arith", "sizes": {"train": 8 if cpu else 64, "val": 0, "eval": 16 if cpu else 256}},
        "model": {"source": str(model)},
        "rollouts": {"engine": engine, "k": 8, "temperature": 1.0, "max_new_tokens": 32 if cpu else 256,
                     "batch_size": 64},
        "rewrite": {"max_prompt_length": 256, "max_teacher_prompt_length": 512,
                    "max_completion_length": 40 if cpu else 264},
        "distill": {"rounds": 1, "teacher": "ema", "epochs": 1, "batch_size": 8, "grad_accum": 4, "lr": 2.0e-5,
                    "processes": 1, "sharding": "none", "gradient_checkpointing": not cpu,
                    "gpu_memory_gb": None if cpu else 130},
        "evaluation": {"engine": engine, "greedy": True, "expected_confidence": False,
                       "max_new_tokens": 32 if cpu else 256, "batch_size": 256, "bootstrap": 100},
        "tracking": {"experiment": "gpu_check"},
        "variants": {"caopd": {}},
    }


def result(workdir: Path, stage: str) -> dict | None:
    """The ``result`` of the one artifact of ``stage`` in the run, or None when it was not built."""
    for manifest in sorted((workdir / "results" / stage).glob("*/manifest.json")):
        return json.loads(manifest.read_text())["result"]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work directory (model, config, results)")
    parser.add_argument("--cpu", action="store_true", help="the CPU-only parts (hf engine, no sharding)")
    parser.add_argument("--cores", type=int, default=8)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from caopd.config import resolve
    from caopd.memory import GIB, layout_of, memory_breakdown
    from caopd.models.shape import model_shape

    began = time.perf_counter()
    model = build_model(args.out / "model", CPU_SHAPE if args.cpu else QWEN3_0_6B)
    cfg = check_config(model, args.cpu)
    (args.out / "config.yaml").write_text(yaml.safe_dump(cfg))
    resolved = resolve(cfg)["variants"]["caopd"]
    predicted = memory_breakdown(model_shape(resolved["model"]), layout_of(resolved, cuda=not args.cpu))
    with open(args.out / "snakemake.log", "w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(args.out),
             "--configfile", str(args.out / "config.yaml"), "--cores", str(args.cores)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    rollouts, distill = result(args.out, "rollouts"), result(args.out, "distill")
    evaluation, metrics = result(args.out, "eval_rollouts"), result(args.out, "evaluate")
    parts = {
        "rollouts": rollouts is not None and rollouts["n_rollouts"] == 8 * cfg["task"]["sizes"]["train"],
        "distill": distill is not None and distill["steps"] == distill["total_steps"] > 0,
        "eval_rollouts": evaluation is not None and evaluation["n_prompts"] == cfg["task"]["sizes"]["eval"],
        "evaluate": metrics is not None and 0.0 <= metrics["ece"] <= 1.0,
    }
    print(f"model: Qwen3 {'(2-layer CPU shape)' if args.cpu else '0.6B shape'}, "
          f"{model_shape(resolved['model']).n_params / 1e6:.1f}M parameters; snakemake exit {done.returncode}")
    if rollouts:
        print(f"rollouts       {rollouts['tokens_per_second']:10.1f} tokens/s ({rollouts['n_rollouts']} rollouts)")
    if distill:
        print(f"distill        {distill['steps'] / distill['seconds']:10.3f} steps/s ({distill['steps']} steps)")
        peak = distill.get("peak_gpu_memory_bytes")
        estimate = sum(predicted.values())
        print(f"  memory: planner {estimate / GIB:.2f} GiB"
              + (f", measured peak {peak / GIB:.2f} GiB (ratio {peak / estimate:.2f})" if peak else
                 " (no GPU: no measured peak)"))
    if evaluation:
        print(f"eval_rollouts  {evaluation['tokens_per_second']:10.1f} tokens/s ({evaluation['n_prompts']} questions)")
    if metrics:
        print(f"evaluate       accuracy {metrics['accuracy']:.3f}, ECE {metrics['ece']:.3f}")
    for part, ok in parts.items():
        print(f"{'PASS' if ok else 'FAIL'}  {part}")
    print(f"wall time {time.perf_counter() - began:.0f} s; log {args.out / 'snakemake.log'}")
    return 0 if done.returncode == 0 and all(parts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
