"""How many copy-task steps the embedded tiny model needs to form its induction heads, per seed
(docs/tiny_model.md §1): the warm-up's first phase, run alone until the mean loss of 10 steps is
below the stop loss, or the cap.

    .venv/bin/python benchmarks/copy_task_convergence.py [--seeds 0 1 2 3 4] [--lr-warmup 50 0] [--cap 1500]

Defaults are the embedded default's settings (config/config.yaml). Prints one row per seed and
learning-rate warm-up: steps run, the final loss (mean of 10 steps), whether it converged, seconds.
The model and tokenizer are built as the base_model stage builds them
(caopd.models.base.build_tiny), the copy task is caopd.models.warmup.train_induction itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def converge(seed: int, tiny: dict, lr_warmup: int, cap: int, stop_loss: float) -> tuple[int, float, float]:
    """(steps run, final loss, seconds) of the copy task for one seed."""
    import torch
    from transformers import Qwen2ForCausalLM

    from caopd.models.base import tiny_config, tokenizer_corpus
    from caopd.models.tokenizer import train_tokenizer
    from caopd.models.warmup import train_induction

    tokenizer = train_tokenizer(tokenizer_corpus(seed, [1, 2, 3, 4, 5]), tiny["vocab_size"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(tiny, tokenizer))
    torch.manual_seed(seed)
    warm = tiny["warmup"]
    opt = torch.optim.AdamW(model.parameters(), lr=warm["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    start = time.perf_counter()
    loss, run = train_induction(model, tokenizer, opt, steps=10, length=48, batch_size=64, seed=seed,
                                max_steps=cap, stop_loss=stop_loss, lr_warmup=lr_warmup)
    return run, loss, time.perf_counter() - start


def main() -> None:
    import torch

    from caopd.config import load_file

    tiny = load_file(Path(__file__).resolve().parent.parent / "config" / "config.yaml")["base"]["model"]["tiny"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--lr-warmup", type=int, nargs="+", default=[50, 0])
    ap.add_argument("--cap", type=int, default=tiny["warmup"]["induction_max_steps"])
    ap.add_argument("--stop-loss", type=float, default=tiny["warmup"]["induction_stop_loss"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("seed  lr_warmup  steps  loss    converged  seconds", flush=True)
    for lr_warmup in args.lr_warmup:
        for seed in args.seeds:
            run, loss, seconds = converge(seed, tiny, lr_warmup, args.cap, args.stop_loss)
            print(f"{seed:>4}  {lr_warmup:>9}  {run:>5}  {loss:6.3f}  {str(loss < args.stop_loss):>9}  {seconds:7.1f}", flush=True)


if __name__ == "__main__":
    main()
