"""Stage evaluate: verify and parse a model's eval answers, then summarise (DESIGN §8).

``evaluation.split`` picks the split: ``eval`` (the default, the reported figures) or ``val``
(the held-out questions settings are chosen on, so that nothing is tuned on ``eval``).

Writes ``scored.parquet`` (one row per answer: prompt id, sample index, level, correctness,
confidence, parse flags) and ``metrics.json`` (:func:`caopd.evaluation.summary.summarize`, plus
per-level accuracy and confidence).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.data import read_split
from caopd.store import write_json

METRICS_FILE = "metrics.json"
SCORED_FILE = "scored.parquet"


def run_evaluate(params: Mapping[str, Any], inputs: Mapping[str, Path], out: Path, *, seed: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from caopd.evaluation.summary import score_rows, summarize, to_jsonable
    from caopd.rollouts.engine import read_rollouts
    from caopd.rollouts.stage import ROLLOUTS_FILE

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
    metrics["task"] = params["task"]
    metrics["n_questions"] = int(np.unique(groups).size)
    metrics["split"] = split
    scored.to_parquet(Path(out) / SCORED_FILE, index=False)
    write_json(Path(out) / METRICS_FILE, to_jsonable(metrics))
    return {k: metrics[k] for k in ("n", "accuracy", "mean_confidence", "overconfidence_gap", "ece", "spr")}
