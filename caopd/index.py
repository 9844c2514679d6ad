"""The per-variant index: ``results/index/<variant>.json``, the human handle on the keyed store.

``{"variant": name, "stages": [{"stage", "round", "key", "path", "mlflow_run_id"}, ...],
"metrics": path of the variant's metrics.json (once evaluation exists), "mlflow_run_id": parent run}``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from caopd.store import read_json, verify_artifact, write_json


def build_index(variant: str, stages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Index body from the variant's stage table; every artifact is verified on the way."""
    entries = []
    metrics = None
    for stage in stages:
        manifest = verify_artifact(stage["path"])
        entries.append({**stage, "mlflow_run_id": manifest.get("mlflow_run_id")})
        if stage["stage"] == "evaluate":
            candidate = Path(stage["path"]) / "metrics.json"
            metrics = str(candidate) if candidate.is_file() else None
    return {"variant": variant, "stages": entries, "metrics": metrics}


def read_index(index_dir: str | Path, variant: str) -> dict[str, Any]:
    """``index_dir/<variant>.json``; FileNotFoundError naming it when the variant has not run."""
    path = Path(index_dir) / f"{variant}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index for variant {variant!r}; run its target first")
    return read_json(path)


def stage_dirs(index: Mapping[str, Any], stage: str, root: str | Path) -> list[Path]:
    """The artifact directories of ``stage`` in an index (one per round), under ``root``, the
    workflow's working directory that the index's paths are relative to."""
    return [Path(root) / entry["path"] for entry in index["stages"] if entry["stage"] == stage]


def write_index(variant: str, stages: Sequence[Mapping[str, Any]], out: str | Path,
                tracking: Mapping[str, Any] | None) -> dict[str, Any]:
    index = build_index(variant, stages)
    index["mlflow_run_id"] = None
    write_json(out, index)
    if tracking is not None:
        from caopd.tracking import log_variant

        metrics = read_json(index["metrics"]) if index["metrics"] else None
        index["mlflow_run_id"] = log_variant(
            tracking["uri"], tracking["experiment"], variant, index, metrics, out
        )
        write_json(out, index)
    return index


def training_targets(artifact: str | Path):
    """The per-prompt training targets (``targets.parquet`` rows) an artifact holds, or None.

    A ``targets`` artifact holds one round's; an online ``distill`` artifact holds every refresh
    window's (``online/refresh-*/targets.parquet``, concatenated in window order, with a
    ``window`` column); any other artifact holds none.
    """
    import pandas as pd

    from caopd.targets import TARGETS_FILE, read_frame

    artifact = Path(artifact)
    if (artifact / TARGETS_FILE).is_file():
        return read_frame(artifact / TARGETS_FILE)
    windows = sorted((artifact / "online").glob("refresh-*/" + TARGETS_FILE))
    if not windows:
        return None
    frames = [read_frame(path).assign(window=int(path.parent.name.split("-")[-1])) for path in windows]
    return pd.concat(frames, ignore_index=True)

