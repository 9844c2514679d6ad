"""A seed study: the whole pipeline at N seeds, the paper's checks at each, and across seeds the
pass rate of each check and the mean effect with its 95% interval.

A training run is one draw: another seed, or another machine's CPU numerics, gives another
student. The checks of :mod:`caopd.checks` are therefore reported over seeds, never gated on one.
Run it (each seed in its own working directory, one after the other; a benchmark, never part of
CI)::

    caopd seed-study --seeds 0 1 2 3 4 --out runs/seed_study
    caopd seed-study --seeds 0 1 2 3 4 --out runs/seed_study --aggregate-only
    python benchmarks/seed_study.py --seeds 0 1 2 3 4 --out runs/seed_study   # the same

It writes into ``--out``: ``seed-<s>/`` (each seed's ``results/`` and ``logs/``),
``per_seed.tsv`` (one row per seed: the metrics the checks read, the paired accuracy
differences, each check's verdict), ``summary.tsv`` (per check its pass count; per effect its
mean, 95% Student-t interval over seeds, minimum and maximum), ``checks.txt`` (the same, for
reading, with the CPU it ran on) and ``seed_study.png``.
"""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caopd.checks import CHECKS, ROLES, Check, checks_from_index
from caopd.store import write_text

#: Effects reported with their across-seed mean and interval: name -> (description, function of
#: a seed's row of :func:`per_seed_table`).
EFFECTS: dict[str, str] = {
    "gap_sdft": "overconfidence gap of SDFT",
    "gap_caopd": "overconfidence gap of CaOPD",
    "gap_closer": "|gap(SDFT)| - |gap(CaOPD)|: how much closer to 0 CaOPD states",
    "ece_ratio": "ECE(CaOPD) / ECE(SDFT)",
    "spr_gain": "SPR(CaOPD) - SPR(SDFT)",
    "acc_vs_sdft": "accuracy CaOPD - SDFT (paired)",
    "acc_vs_base": "accuracy CaOPD - base (paired)",
    "expected_gap_caopd": "overconfidence gap of CaOPD's expected stated confidence",
}


@dataclass(frozen=True)
class SeedRun:
    """One seed's evaluations: ``metrics[role]``, ``paired[other]`` and the checks."""

    seed: int
    metrics: Mapping[str, Mapping[str, Any]]
    paired: Mapping[str, Mapping[str, float]]
    checks: Sequence[Check]


def seed_row(run: SeedRun) -> dict[str, Any]:
    """The flat row of one seed: metrics the checks read, effects, verdicts (``check_<name>``)."""
    m, p = run.metrics, run.paired
    expected = (m["caopd"].get("expected_confidence") or {})
    row: dict[str, Any] = {"seed": run.seed}
    for role in ROLES:
        row[f"acc_{role}"] = m[role]["accuracy"]
    row.update({
        "gap_sdft": m["sdft"]["overconfidence_gap"],
        "gap_caopd": m["caopd"]["overconfidence_gap"],
        "gap_closer": abs(m["sdft"]["overconfidence_gap"]) - abs(m["caopd"]["overconfidence_gap"]),
        "ece_sdft": m["sdft"]["ece"],
        "ece_caopd": m["caopd"]["ece"],
        "ece_ratio": m["caopd"]["ece"] / m["sdft"]["ece"] if m["sdft"]["ece"] else math.nan,
        "spr_sdft": m["sdft"]["spr"],
        "spr_caopd": m["caopd"]["spr"],
        "spr_gain": m["caopd"]["spr"] - m["sdft"]["spr"],
        "acc_vs_sdft": p["sdft"]["diff"], "acc_vs_sdft_lo": p["sdft"]["lo"],
        "acc_vs_base": p["base"]["diff"], "acc_vs_base_lo": p["base"]["lo"],
        "expected_gap_caopd": expected.get("overconfidence_gap") if expected.get("n") else math.nan,
    })
    for check in run.checks:
        row[f"check_{check.name}"] = bool(check.passed)
    row["checks_passed"] = sum(bool(c.passed) for c in run.checks)
    return row


def mean_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``values`` and its Student-t ``1 - alpha`` interval.

    NaN values are dropped; one value gives ``(v, nan, nan)``; none gives three NaNs.
    """
    from scipy import stats

    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return math.nan, math.nan, math.nan
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
    half = float(stats.t.ppf(1 - alpha / 2, len(kept) - 1)) * sd / math.sqrt(len(kept))
    return mean, mean - half, mean + half


def summary_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per check its pass count over the seeds, per effect its mean, interval, min and max."""
    out: list[dict[str, Any]] = []
    n = len(rows)
    for name in CHECKS:
        passed = sum(bool(r[f"check_{name}"]) for r in rows)
        out.append({"kind": "check", "name": name, "passed": passed, "seeds": n,
                    "description": f"passes at {passed} of {n} seeds"})
    for name, description in EFFECTS.items():
        values = [r[name] for r in rows]
        mean, lo, hi = mean_interval(values)
        kept = [v for v in values if not math.isnan(v)]
        out.append({"kind": "effect", "name": name, "mean": mean, "lo": lo, "hi": hi,
                    "min": min(kept) if kept else math.nan, "max": max(kept) if kept else math.nan,
                    "seeds": len(kept), "description": description})
    return out


def describe_cpu(cpuinfo: str) -> str | None:
    """The first processor of a ``/proc/cpuinfo`` text as ``NAME (family F model M, VEC)``.

    VEC is the widest SIMD extension among its flags (``avx512``, ``avx2``, ``avx`` or ``no avx``):
    with the thread count it sets the order of float summations, so two machines that print the
    same model name (``AMD EPYC``) can still draw differently (README "Results"). Returns None
    where the text names no model.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block only
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return None
    flags = set(fields.get("flags", "").split())
    vector = next((v for v, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")) if flag in flags),
                  "no avx")
    family, model = fields.get("cpu family"), fields.get("model")
    where = f"family {family} model {model}, " if family and model else ""
    return f"{name} ({where}{vector})"


def cpu_name() -> str:
    """This machine's CPU (:func:`describe_cpu` of ``/proc/cpuinfo``), else the platform's
    processor string."""
    try:
        described = describe_cpu(Path("/proc/cpuinfo").read_text())
    except OSError:
        described = None
    if described:
        return described
    return platform.processor() or "unknown CPU"


def format_report(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
                  cpu: str, seconds: Mapping[int, float] | None = None) -> str:
    """The study for reading: per-seed table, pass rates, effects with intervals."""
    lines = [f"seed study: {len(rows)} seeds on {cpu}", "",
             "seed  acc base/sdft/caopd   gap sdft  gap caopd  ECE sdft->caopd  SPR sdft->caopd  "
             "caopd-sdft [lo]   caopd-base [lo]   checks"]
    for r in rows:
        lines.append(
            f"{r['seed']:>4}  {r['acc_base']:.3f}/{r['acc_sdft']:.3f}/{r['acc_caopd']:.3f}  "
            f"{r['gap_sdft']:+.3f}    {r['gap_caopd']:+.3f}     {r['ece_sdft']:.3f}->{r['ece_caopd']:.3f}     "
            f"{r['spr_sdft']:.3f}->{r['spr_caopd']:.3f}     {r['acc_vs_sdft']:+.3f} [{r['acc_vs_sdft_lo']:+.3f}]  "
            f"{r['acc_vs_base']:+.3f} [{r['acc_vs_base_lo']:+.3f}]  {r['checks_passed']}/5"
            + (f"  ({seconds[r['seed']] / 60:.1f} min)" if seconds and r["seed"] in seconds else "")
        )
    lines += ["", "check                   passes"]
    lines += [f"{s['name']:<24}{s['passed']} of {s['seeds']}" for s in summary if s["kind"] == "check"]
    lines += ["", "effect                  mean    95% interval over seeds   min..max"]
    for s in summary:
        if s["kind"] == "effect":
            lines.append(f"{s['name']:<22}{s['mean']:+.3f}   [{s['lo']:+.3f}, {s['hi']:+.3f}]          "
                         f"{s['min']:+.3f}..{s['max']:+.3f}   ({s['description']})")
    return "\n".join(lines) + "\n"


def study_figure(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Left: each seed's overconfidence gap and ECE of SDFT and CaOPD with the across-seed mean and
    interval; right: the pass count of each check."""
    from caopd.evaluation.plots import new_figure, save_figure

    fig, (left, right) = new_figure(1, 2, figsize=(10, 3.6))
    series = [("gap_sdft", "gap SDFT"), ("gap_caopd", "gap CaOPD"), ("ece_sdft", "ECE SDFT"),
              ("ece_caopd", "ECE CaOPD")]
    for x, (key, _label) in enumerate(series):
        values = [r[key] for r in rows]
        left.scatter([x] * len(values), values, color="0.5", s=14, zorder=2)
        mean, lo, hi = mean_interval(values)
        yerr = None if math.isnan(lo) else [[mean - lo], [hi - mean]]
        left.errorbar([x + 0.15], [mean], yerr=yerr, fmt="o", color="C3", capsize=4, zorder=3)
    left.axhline(0.0, color="0.7", lw=0.8)
    left.set_xticks(range(len(series)), [label for _, label in series])
    left.set_title(f"per seed (grey) and mean with 95% interval (red), {len(rows)} seeds")
    checks = [s for s in summary if s["kind"] == "check"]
    right.barh(range(len(checks)), [s["passed"] for s in checks], color="C0")
    right.set_yticks(range(len(checks)), [s["name"] for s in checks])
    right.set_xlim(0, max(len(rows), 1))
    right.set_xlabel("seeds passing")
    right.invert_yaxis()
    return save_figure(fig, path)


def write_study(out: Path, runs: Sequence[SeedRun], seconds: Mapping[int, float] | None = None) -> str:
    """Write ``per_seed.tsv``, ``summary.tsv``, ``checks.txt`` and ``seed_study.png``; return the report."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    rows = [seed_row(run) for run in sorted(runs, key=lambda r: r.seed)]
    for row in rows:
        row["minutes"] = round(seconds[row["seed"]] / 60, 2) if seconds and row["seed"] in seconds else None
    summary = summary_rows(rows)
    pd.DataFrame(rows).to_csv(out / "per_seed.tsv", sep="\t", index=False, float_format="%.4f")
    pd.DataFrame(summary).to_csv(out / "summary.tsv", sep="\t", index=False, float_format="%.4f")
    report = format_report(rows, summary, cpu_name(), seconds)
    (out / "checks.txt").write_text(report, encoding="utf-8")
    study_figure(rows, summary, out / "seed_study.png")
    return report


def run_seed(seed: int, workdir: Path, configfiles: Sequence[Path], cores: int,
             extra: Sequence[str] = ()) -> float:
    """Run the pipeline at ``seed`` in ``workdir`` (``snakemake --config seed=S``, ``extra``: its
    targets); its seconds.

    Raises:
        RuntimeError: snakemake failed (names the seed and the log).
    """
    root = Path(__file__).resolve().parents[2]
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"),
           "--directory", str(workdir), "--cores", str(cores), *extra,
           "--configfile", *[str(Path(c).resolve()) for c in configfiles],
           "--config", f"seed={seed}"]
    began = time.perf_counter()
    with open(workdir / "snakemake.log", "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"seed {seed}: snakemake failed; see {workdir / 'snakemake.log'}")
    seconds = time.perf_counter() - began
    record_seconds(workdir, seconds)
    return seconds


def record_seconds(workdir: Path, seconds: float) -> None:
    """Keep a finished seed's wall seconds in ``workdir/seconds.txt``, so that ``--aggregate-only``
    reports them too (written whole)."""
    write_text(workdir / "seconds.txt", f"{seconds:.1f}\n")


def recorded_seconds(workdir: Path) -> float | None:
    """The wall seconds :func:`record_seconds` kept in ``workdir``; None where none were kept (a
    run that this study did not time)."""
    path = workdir / "seconds.txt"
    return float(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_study(seeds: Sequence[int], out: Path, *, configfiles: Sequence[Path], cores: int,
              names: Mapping[str, str] | None = None, targets: Sequence[str] = (),
              aggregate_only: bool = False) -> str:
    """Run the pipeline at each of ``seeds`` in ``out/seed-<s>/`` (unless ``aggregate_only``: then
    only read the finished seeds), check each through its index, write the study
    (:func:`write_study`); return the report.

    Args:
        names: role -> the variant that plays it (default: the variants named as the roles).
        targets: snakemake targets (default: every variant).
    """
    runs, seconds = [], {}
    for seed in seeds:
        workdir = out / f"seed-{seed}"
        if not aggregate_only:
            seconds[seed] = run_seed(seed, workdir, configfiles, cores, targets)
            print(f"seed {seed}: {seconds[seed] / 60:.1f} min", flush=True)
        elif (kept := recorded_seconds(workdir)) is not None:
            seconds[seed] = kept
        metrics, paired, checks = checks_from_index(workdir / "results" / "index", names=names)
        runs.append(SeedRun(seed, metrics, paired, checks))
    return write_study(out, runs, seconds or None)
