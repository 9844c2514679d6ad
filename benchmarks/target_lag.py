"""How far CaOPD's targets lag greedy accuracy: a run's base model on its own training prompts,
greedy success against the mean sampled success (``P_acc`` over K samples) per rollout
temperature. Training split only: nothing here reads val or eval (docs/tiny_model.md §8).

CaOPD trains the stated confidence toward ``P_acc``, the success rate of samples at
``rollouts.temperature``, while the checks compare the stated confidence with greedy accuracy; the
difference printed here is the part of CaOPD's gap that the targets carry before any training.

    .venv/bin/python benchmarks/target_lag.py runs/seed_study/seed-1 --temperatures 0.8 0.5 0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def stage_path(run: Path, variant: str, stage: str) -> Path:
    """The artifact of ``stage`` in ``variant``'s index of the run in ``run``, verified
    (:func:`caopd.index.stage_dirs`)."""
    from caopd.index import read_index, stage_dirs

    (directory,) = stage_dirs(read_index(run / "results" / "index", variant), stage, run)
    return directory


def mean_success(data: Path, model: Path, task: str, *, greedy: bool, temperature: float, k: int,
                 prompts: int, seed: int, threads: int) -> float:
    """Mean over the first ``prompts`` training prompts of the share of ``k`` samples (1 greedy
    completion) that the task's verifier accepts."""
    from caopd.data import read_split
    from caopd.rollouts.engine import SamplingConfig
    from caopd.rollouts.files import read_rollouts
    from caopd.rollouts.stage import sample_rollouts
    from caopd.targets import compute_targets

    sampling = SamplingConfig(n=1 if greedy else k, temperature=temperature, greedy=greedy,
                              max_new_tokens=40, batch_size=256)
    with tempfile.TemporaryDirectory() as out:
        sample_rollouts(data_dir=data, model_artifact=model, split="train", sampling=sampling, engine="hf",
                        seed=seed, out=out, stop=prompts, threads=threads)
        records = read_rollouts(Path(out) / "rollouts.parquet")
    _, per_prompt = compute_targets(read_split(data, "train"), records, task)
    return float(per_prompt["p_acc"].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run's working directory (holds results/index/)")
    ap.add_argument("--variant", default="base", help="whose index names the data and base model")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8, 0.5, 0.3])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=384)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    data = stage_path(args.run, args.variant, "prepare_data")
    model = stage_path(args.run, args.variant, "base_model")
    task = json.loads((data / "spec.json").read_text())["params"]["task"]["name"]
    common = dict(k=args.k, prompts=args.prompts, seed=args.seed, threads=args.threads)
    greedy = mean_success(data, model, task, greedy=True, temperature=1.0, **common)
    print(f"{args.run}: {task}, first {args.prompts} training prompts, K = {args.k}")
    print(f"greedy success {greedy:.3f}")
    print("temperature  mean P_acc  lag (greedy - P_acc)")
    for t in args.temperatures:
        sampled = mean_success(data, model, task, greedy=False, temperature=t, **common)
        print(f"{t:>11}  {sampled:10.3f}  {greedy - sampled:+.3f}", flush=True)


if __name__ == "__main__":
    main()
