"""The per-variant index: ``results/index/<variant>.json``, the human handle on the keyed store.

``{"variant": name, "stages": [{"stage", "round", "key", "path", "mlflow_run_id"}, ...],
"metrics": path of the variant's metrics.json (once evaluation exists), "mlflow_run_id": parent run}``

Readers verify what they read: :func:`read_index` checks the evaluate artifact that holds the
index's ``metrics`` against its manifest, :func:`stage_dirs` every artifact it returns, and
:func:`read_metrics` reads a variant's metrics through both; a hand-edited ``metrics.json`` is an
error naming the file, never a number in a table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from caopd.artifacts import METRICS_FILE, ONLINE_DIR, TARGETS_FILE
from caopd.store import read_json, verify_artifact, write_json

log = logging.getLogger(__name__)


def build_index(variant: str, stages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Index body from the variant's stage table; every artifact is verified on the way."""
    entries = []
    metrics = None
    for stage in stages:
        manifest = verify_artifact(stage["path"])
        entries.append({**stage, "mlflow_run_id": manifest.get("mlflow_run_id")})
        if stage["stage"] == "evaluate":
            candidate = Path(stage["path"]) / METRICS_FILE
            metrics = str(candidate) if candidate.is_file() else None
    return {"variant": variant, "stages": entries, "metrics": metrics}


def read_index(index_dir: str | Path, variant: str, root: str | Path | None = None) -> dict[str, Any]:
    """``index_dir/<variant>.json``, its metrics' artifact verified.

    ``root`` is the working directory the index's paths are relative to (default: the parent of
    ``index_dir``'s parent, as in ``results/index/``).

    Raises:
        FileNotFoundError: naming the index when the variant has not run.
        caopd.store.ArtifactError: naming the file of the evaluate artifact that does not match
            its manifest (a hand-edited ``metrics.json``).
    """
    path = Path(index_dir) / f"{variant}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index for variant {variant!r}; run its target first")
    index = read_json(path)
    if index.get("metrics"):
        root = Path(index_dir).parent.parent if root is None else Path(root)
        verify_artifact(root / Path(index["metrics"]).parent)
    return index


def read_metrics(index_dir: str | Path, variant: str, root: str | Path | None = None) -> dict[str, Any]:
    """The verified ``metrics.json`` of ``variant`` (see :func:`read_index`); FileNotFoundError
    naming the index when the variant has no metrics yet."""
    index = read_index(index_dir, variant, root)
    if not index.get("metrics"):
        raise FileNotFoundError(f"{Path(index_dir) / f'{variant}.json'}: variant {variant!r} has no metrics yet")
    root = Path(index_dir).parent.parent if root is None else Path(root)
    return read_json(root / index["metrics"])


def stage_dirs(index: Mapping[str, Any], stage: str, root: str | Path) -> list[Path]:
    """The artifact directories of ``stage`` in an index (one per round), under ``root``, the
    workflow's working directory that the index's paths are relative to; each verified against
    its manifest (:func:`caopd.store.verify_artifact`, ArtifactError naming a changed file)."""
    dirs = [Path(root) / entry["path"] for entry in index["stages"] if entry["stage"] == stage]
    for directory in dirs:
        verify_artifact(directory)
    return dirs


def write_index(variant: str, stages: Sequence[Mapping[str, Any]], out: str | Path,
                tracking: Mapping[str, Any] | None) -> dict[str, Any]:
    """Write the index and, where ``tracking`` is given, the variant's parent MLflow run.

    A tracking failure is a warning: the index is written with ``mlflow_run_id: null`` and
    ``caopd track`` creates the parent run later.
    """
    index = build_index(variant, stages)
    index["mlflow_run_id"] = None
    write_json(out, index)
    if tracking is not None:
        metrics = read_json(index["metrics"]) if index["metrics"] else None
        try:
            index["mlflow_run_id"] = log_variant(
                tracking["uri"], tracking["experiment"], variant, index, metrics, out
            )
        except Exception as err:  # noqa: BLE001 - tracking never fails the index
            log.warning("variant %s: MLflow at %s failed (%s); `caopd track` logs it later",
                        variant, tracking["uri"], err)
            return index
        write_json(out, index)
    return index


def training_targets(artifact: str | Path):
    """The per-prompt training targets (``targets.parquet`` rows) an artifact holds, or None.

    A ``targets`` artifact holds one round's; an online ``distill`` artifact holds every refresh
    window's (``online/refresh-*/targets.parquet``, concatenated in window order, with a
    ``window`` column); any other artifact holds none.
    """
    import pandas as pd

    from caopd.parquet import read_frame

    artifact = Path(artifact)
    if (artifact / TARGETS_FILE).is_file():
        return read_frame(artifact / TARGETS_FILE)
    windows = sorted((artifact / ONLINE_DIR).glob("refresh-*/" + TARGETS_FILE))
    if not windows:
        return None
    frames = [read_frame(path).assign(window=int(path.parent.name.split("-")[-1])) for path in windows]
    return pd.concat(frames, ignore_index=True)


def log_variant(uri: str, experiment: str, variant: str, index: Mapping[str, Any],
                metrics: Mapping[str, Any] | None, index_path: str | Path) -> str:
    """Create the variant's parent run: stage keys and run ids as params, headline metrics."""
    from mlflow.entities import Metric, Param

    from caopd.tracking import client_for, ensure_store, fail_fast

    fail_fast()
    client = client_for(uri)
    experiment_id = ensure_store(uri, experiment)
    run = client.create_run(
        experiment_id, tags={"caopd.variant": variant, "caopd.kind": "variant"}, run_name=f"variant/{variant}"
    )
    params = []
    for entry in index["stages"]:
        label = entry["stage"] if entry["round"] is None else f"{entry['stage']}.r{entry['round']}"
        params.append(Param(f"{label}.key", entry["key"]))
        if entry.get("mlflow_run_id"):
            params.append(Param(f"{label}.run", entry["mlflow_run_id"]))
            client.set_tag(entry["mlflow_run_id"], f"caopd.variant.{variant}", run.info.run_id)
    client.log_batch(run.info.run_id, params=params[:100])
    if metrics:
        stamp = int(time.time() * 1000)
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        client.log_batch(
            run.info.run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in numeric.items()]
        )
    client.log_artifact(run.info.run_id, str(index_path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
