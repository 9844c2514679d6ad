"""Stage evaluate: verify and parse a model's eval answers, then summarise (DESIGN §8).

``evaluation.split`` picks the split: ``eval`` (the default, the reported figures) or ``val``
(the held-out questions settings are chosen on, so that nothing is tuned on ``eval``).

Writes ``scored.parquet`` (one row per answer: prompt id, sample index, level, correctness,
confidence, parse flags) and ``metrics.json`` (:func:`caopd.evaluation.summary.summarize`, plus
per-level accuracy and confidence). Where the rollouts carry an expected stated confidence per
answer (greedy evaluation, :mod:`caopd.rollouts.expected_confidence`), ``metrics.json`` also
has ``expected_confidence``: the headline metrics with that mean in place of the decoded number,
on the answers that have one, and ``scored.parquet`` a column of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.artifacts import EXPECTED_FILE, METRICS_FILE, ROLLOUTS_FILE, SCORED_FILE
from caopd.data import read_split
from caopd.parquet import table_from_pandas, write_table
from caopd.store import write_json



def run_evaluate(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, *, seed: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from caopd.evaluation.summary import score_rows, summarize, to_jsonable
    from caopd.rollouts.files import read_rollouts

    split = params.get("split", "eval")
    examples = {ex.id: ex for ex in read_split(inputs["data"], split)}
    records = read_rollouts(Path(inputs["rollouts"]) / ROLLOUTS_FILE)
    missing = [r.prompt_id for r in records if r.prompt_id not in examples]
    if missing:
        raise ValueError(f"{inputs['rollouts']}: prompt id {missing[0]!r} is not in the {split} split")
    truths = [examples[r.prompt_id].ground_truth for r in records]
    scored = score_rows([r.text for r in records], truths, params["task"])
    scored.insert(0, "prompt_id", [r.prompt_id for r in records])
    scored.insert(1, "sample_index", [r.sample_index for r in records])
    scored.insert(2, "level", pd.array([examples[r.prompt_id].level for r in records], dtype="Int64"))
    groups = pd.factorize(scored["prompt_id"])[0]
    cfg = params["evaluation"]
    metrics = summarize(scored, n_bins=cfg["n_bins"], n_resamples=cfg["bootstrap"], seed=seed, groups=groups)
    if scored["level"].notna().any():
        per_level = {}
        for level, rows in scored.groupby("level"):
            per_level[str(level)] = {
                "n": int(len(rows)),
                "accuracy": float(rows["correct"].mean()),
                "mean_confidence": float(rows["confidence"].mean()),
            }
        metrics["per_level"] = per_level
    expected = Path(inputs["rollouts"]) / EXPECTED_FILE
    if expected.exists():
        scored["expected_confidence"] = _expected_column(expected, scored)
        metrics["expected_confidence"] = summarize_expected(scored, cfg, seed=seed, groups=groups)
    metrics["task"] = params["task"]
    metrics["n_questions"] = int(np.unique(groups).size)
    metrics["split"] = split
    write_table(table_from_pandas(scored), Path(out) / SCORED_FILE, compression="snappy")
    write_json(Path(out) / METRICS_FILE, to_jsonable(metrics))
    return {k: metrics[k] for k in ("n", "accuracy", "mean_confidence", "overconfidence_gap", "ece", "spr")}


def _expected_column(path: Path, scored: Any) -> Any:
    """The expected confidence of each scored row, matched on (prompt_id, sample_index)."""
    import pandas as pd

    table = pd.read_parquet(path)
    keyed = table.set_index(["prompt_id", "sample_index"])["expected_confidence"]
    if keyed.index.duplicated().any():
        raise ValueError(f"{path}: (prompt_id, sample_index) repeats")
    index = pd.MultiIndex.from_arrays([scored["prompt_id"], scored["sample_index"]])
    missing = index.difference(keyed.index)
    if len(missing):
        raise ValueError(f"{path}: no row for answer {missing[0]} of the rollouts")
    return keyed.reindex(index).to_numpy(dtype="float64")


def summarize_expected(scored: Any, cfg: Mapping[str, Any], *, seed: int, groups: Any) -> dict[str, Any]:
    """Headline metrics and intervals with the expected confidence as the confidence.

    Rows without one (no confidence label, or a tokenizer that merges digits) are left out; ``n``
    says how many remain (0: the block's metrics are None).
    """
    from caopd.evaluation.summary import HEADLINE, summarize

    has = scored["expected_confidence"].notna().to_numpy()
    if not has.any():
        return {"n": 0, **{name: None for name in HEADLINE}}
    rows = scored.loc[has].copy()
    rows["confidence"] = rows["confidence_raw"] = rows["expected_confidence"]
    rows["confidence_valid"] = True
    full = summarize(rows, n_bins=cfg["n_bins"], n_resamples=cfg["bootstrap"], seed=seed, groups=groups[has])
    return {"n": full["n"], **{name: full[name] for name in HEADLINE}, "ci95": full["ci95"]}


def run(job: Any) -> dict[str, Any]:
    """Stage ``evaluate`` (the stage contract, :func:`caopd.job.run_stage`); attaches the metrics
    file to the run."""
    summary = run_evaluate(job.params, job.inputs, job.out, seed=job.seed)
    job.log_artifact(job.out / METRICS_FILE)
    return summary
