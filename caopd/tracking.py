"""MLflow tracking: one run per artifact key, one parent run per variant (DESIGN §9).

The default backend is ``sqlite:///results/mlflow.db``; ``MLFLOW_TRACKING_URI`` (a server, which a
cluster must use: SQLite on a shared filesystem is not safe) overrides the config. mlflow is
imported inside functions only: it costs about a second and must never load at Snakefile parse
time. A fresh SQLite store cannot be created by several jobs at once, so the workflow's
``tracking_store`` rule calls :func:`ensure_store` once before any stage runs.

Open the UI with ``mlflow ui --backend-store-uri sqlite:///results/mlflow.db``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///results/mlflow.db"


def tracking_uri(configured: str | None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the configured URI, else the SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def _client(uri: str):
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_store(uri: str, experiment: str) -> str:
    """Create the store and experiment if absent; return the experiment id."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(experiment)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow params: dotted keys, JSON values, each at most 6000 characters."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)[:6000]
    return flat


class StageRun:
    """The MLflow run of one artifact key."""

    def __init__(self, uri: str, experiment: str, *, stage: str, key: str, round: int | None,
                 upstream: Mapping[str, str], params: Mapping[str, Any]):
        self.client = _client(uri)
        experiment_id = ensure_store(uri, experiment)
        tags = {
            "caopd.stage": stage,
            "caopd.key": key,
            "caopd.round": "" if round is None else str(round),
            "caopd.upstream": json.dumps(dict(upstream), sort_keys=True),
            **{f"caopd.upstream.{role}": up for role, up in upstream.items()},
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=f"{stage}/{key}")
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        stamp = int(time.time() * 1000)
        batch = [
            Metric(name, float(value), stamp, step or 0)
            for name, value in metrics.items()
            if value is not None
        ]
        for start in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 500])

    def log_metric_series(self, rows: Iterable[Mapping[str, Any]], step_key: str = "step") -> None:
        """Log training curves: each row has ``step_key`` and numeric columns."""
        from mlflow.entities import Metric
        import time

        stamp = int(time.time() * 1000)
        batch = [
            Metric(name, float(value), stamp, int(row[step_key]))
            for row in rows
            for name, value in row.items()
            if name != step_key and value is not None
        ]
        for start in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def log_variant(uri: str, experiment: str, variant: str, index: Mapping[str, Any],
                metrics: Mapping[str, Any] | None, index_path: str | Path) -> str:
    """Create the variant's parent run: stage keys and run ids as params, headline metrics."""
    client = _client(uri)
    experiment_id = ensure_store(uri, experiment)
    run = client.create_run(
        experiment_id, tags={"caopd.variant": variant, "caopd.kind": "variant"}, run_name=f"variant/{variant}"
    )
    from mlflow.entities import Metric, Param
    import time

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
