"""Generated tokens per second of the ``hf`` rollout engine, by batch size.

For each batch size B the engine samples one completion for each of B distinct prompts in one
batch (temperature 1, ``--max-new-tokens`` cap); tokens/s = completion tokens returned / wall
time of ``generate``. One untimed warm-up call, then the median of ``--repeats`` timed calls.

Run:
    .venv/bin/python benchmarks/generation_speed.py                 # the tests' tiny random model
    .venv/bin/python benchmarks/generation_speed.py --model PATH    # any local model
    .venv/bin/python benchmarks/generation_speed.py --batch-sizes 1 8 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from caopd.rollouts.engine import SamplingConfig
from caopd.rollouts.hf import HFEngine


def _prompts(count: int) -> list[tuple[str, list[dict[str, str]]]]:
    return [
        (f"p{i}", [{"role": "user", "content": f"What is {i} + {3 * i + 1}? Answer with a letter."}])
        for i in range(count)
    ]


def measure(engine: HFEngine, batch_size: int, max_new_tokens: int, repeats: int) -> tuple[float, float, int]:
    """``(median tokens/s, median seconds, tokens per call)`` for one batch of ``batch_size``."""
    prompts = _prompts(batch_size)
    config = SamplingConfig(n=1, max_new_tokens=max_new_tokens, batch_size=batch_size)
    engine.generate(prompts, config, seed=0)  # warm-up
    rates, seconds, tokens = [], [], 0
    for run in range(repeats):
        start = time.perf_counter()
        records = engine.generate(prompts, config, seed=run + 1)
        elapsed = time.perf_counter() - start
        tokens = sum(len(r.completion_token_ids) for r in records)
        rates.append(tokens / elapsed)
        seconds.append(elapsed)
    return statistics.median(rates), statistics.median(seconds), tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="local model directory (default: build the tests' tiny random model)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from caopd.models.random_model import build_tiny_model

            model = build_tiny_model(Path(tmp) / "tiny")
        engine = HFEngine(str(model), dtype=args.dtype, device=args.device, progress=False)
        n_params = sum(p.numel() for p in engine.model.parameters())
        print(
            f"model={model if args.model else 'tiny random (caopd.models.random_model)'} params={n_params:,} "
            f"device={engine.device} dtype={engine.dtype} torch_threads={torch.get_num_threads()} "
            f"max_new_tokens={args.max_new_tokens} repeats={args.repeats}"
        )
        print(f"{'batch':>6} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
        for batch_size in args.batch_sizes:
            rate, seconds, tokens = measure(engine, batch_size, args.max_new_tokens, args.repeats)
            print(f"{batch_size:>6} {tokens:>7} {seconds:>8.3f} {rate:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
