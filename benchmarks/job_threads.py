"""How many threads a tiny-model job should ask for: the default pipeline at one seed in two job
layouts, side by side, their wall times and whether they computed the same bytes.

- ``config``: the threads of the config (the default: one per rollouts, distill and eval_rollouts
  job, so ``--cores 2`` runs the two distills, and the evaluations, side by side);
- ``threads8``: every model stage at 8 threads (the schema's default), scaled down to ``--cores``,
  so the jobs run one after another on all cores.

The second layout starts from the first one's base model and data (``--reuse-base-model``, the
default: the base model's threads are the same in both), so its time is the rest of the DAG; the
report gives both layouts' time after the base model. Each artifact's files are compared through
its manifest's sha256 (``tracking.json``, the MLflow run, left out: it holds run ids and times).
From the repository root of a set-up checkout::

    .venv/bin/python benchmarks/job_threads.py --seed 0 --out runs/job_threads

About 18 minutes on 2 cores. Prints the times, each stage's seconds per layout (Snakemake's
benchmark files) and the artifacts whose bytes differ (none, on the machine it was measured on:
docs/tiny_model.md §10).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caopd.diagnostics.seed_study import run_seed  # noqa: E402

SCHEMA_THREADS = "threads: {base_model: 8, rollouts: 8, distill: 8, eval_rollouts: 8}\n"
#: Files of an artifact that hold where and when it ran, not what it computed.
RUN_RECORDS = ("tracking.json",)


def stage_seconds(workdir: Path) -> dict[str, list[float]]:
    """Snakemake's benchmark seconds of each stage's jobs in ``workdir``: stage -> [s, ...]."""
    out: dict[str, list[float]] = {}
    for tsv in sorted((workdir / "logs" / "benchmarks").glob("*/*.tsv")):
        lines = tsv.read_text().splitlines()
        out.setdefault(tsv.parent.name, []).append(float(lines[1].split("\t")[0]))
    return out


def artifact_files(workdir: Path) -> dict[str, dict[str, str]]:
    """``stage/key`` -> {file: sha256} of every published artifact, without :data:`RUN_RECORDS`."""
    out = {}
    for manifest in sorted((workdir / "results").glob("*/*/manifest.json")):
        files = json.loads(manifest.read_text())["files"]
        name = f"{manifest.parent.parent.name}/{manifest.parent.name}"
        out[name] = {f: meta["sha256"] for f, meta in files.items() if f not in RUN_RECORDS}
    return out


def base_seconds(workdir: Path) -> float:
    """Seconds of the base model and data jobs in ``workdir`` (0 when they were reused)."""
    seconds = stage_seconds(workdir)
    return sum(seconds.get("base_model", [])) + sum(seconds.get("prepare_data", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/job_threads"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--no-reuse-base-model", dest="reuse", action="store_false")
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: give a new --out (a rerun would find every job done)")
    default = ROOT / "config" / "config.yaml"
    overlay = args.out / "threads8.yaml"
    args.out.mkdir(parents=True)
    overlay.write_text(SCHEMA_THREADS, encoding="utf-8")
    layouts = {"config": [default], "threads8": [default, overlay]}
    seconds = {}
    for name, configs in layouts.items():
        workdir = args.out / name
        if name == "threads8" and args.reuse:
            for stage in ("base_model", "prepare_data"):
                shutil.copytree(args.out / "config" / "results" / stage, workdir / "results" / stage)
        seconds[name] = run_seed(args.seed, workdir, configs, args.cores)
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    base = base_seconds(args.out / "config")
    print(f"\nseed {args.seed}, --cores {args.cores}; base model and data jobs: {base:.0f} s")
    print("layout     whole run   after the base model")
    for name, total in seconds.items():
        after = total - base_seconds(args.out / name)
        print(f"{name:<10} {total:>7.0f} s {after:>12.0f} s")
    print("\nstage          " + "  ".join(f"{n:>22}" for n in layouts))
    per_stage = {n: stage_seconds(args.out / n) for n in layouts}
    for stage in sorted(set().union(*per_stage.values())):
        cells = []
        for n in layouts:
            got = per_stage[n].get(stage, [])
            cells.append(f"{len(got)} jobs, median {statistics.median(got):.0f} s" if got else "reused")
        print(f"{stage:<14} " + "  ".join(f"{c:>22}" for c in cells))
    a, b = (artifact_files(args.out / n) for n in layouts)
    reused = ("base_model/", "prepare_data/") if args.reuse else ()
    both = sorted(n for n in a.keys() & b.keys() if not n.startswith(reused))
    differ = [n for n in both if a[n] != b[n]]
    print(f"\n{len(both)} artifacts computed in both layouts; bytes differ in {len(differ)}")
    for name in differ:
        files = sorted(f for f in a[name].keys() | b[name].keys() if a[name].get(f) != b[name].get(f))
        print(f"  {name}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
