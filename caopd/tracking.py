"""MLflow tracking: one run per artifact key, one parent run per variant (DESIGN §9).

Where runs are logged is never part of the work: the URI and the experiment are read when a job
runs (:func:`tracking_settings`: ``MLFLOW_TRACKING_URI`` over ``tracking.uri`` over
``sqlite:///results/mlflow.db``), never a rule's params, an input or a key, so a moved checkout
or another server reruns nothing. mlflow is imported inside functions only: it costs about a
second and must never load at Snakefile parse time.

- Before any job, the workflow's ``onstart`` hook calls :func:`check_tracking` once: it creates a
  fresh SQLite store (concurrent first use fails) or probes a server within seconds, and names
  the URI on the console; an unreachable server stops the workflow before anything runs.
- Inside a job, :class:`StageRun` never fails the job: the first MLflow error is a warning, the
  run goes offline and the job goes on. Everything the run would hold is also kept in the
  artifact as ``tracking.json`` (:class:`StageRecord`), so ``caopd track`` can log it later
  (:mod:`caopd.ingest`). MLflow's HTTP retries are shortened in jobs (:func:`fail_fast`).
- A key has one run: a rerun of a killed or failed job reopens the run of its key (tag
  ``caopd.attempt`` counts the attempts) instead of leaving it RUNNING beside a second one.

Open the UI with ``mlflow ui --backend-store-uri sqlite:///results/mlflow.db`` (artifacts of a
SQLite store go to ``mlruns/`` in the working directory).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from caopd.artifacts import RECORD_FILE

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///results/mlflow.db"
#: MLflow HTTP settings inside jobs (a user's own environment values win): fail in seconds.
FAST_FAILURE_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingUnavailable(RuntimeError):
    """The tracking URI cannot be used (names it and what to do)."""


def tracking_uri(configured: str | None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the configured URI, else the SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def tracking_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """``{"uri", "experiment"}`` of a workflow config's ``tracking`` block, schema defaults filled
    and ``MLFLOW_TRACKING_URI`` applied; read when a job runs, never part of its params."""
    from caopd.config import ConfigError, load_schema, validate

    block = dict((config or {}).get("tracking") or {})
    schema = load_schema()["properties"]["tracking"]
    try:
        validate(block, where="config", schema=schema)
    except ConfigError as err:
        raise ConfigError(str(err).replace("key '", "key 'tracking.")) from None
    return {"uri": tracking_uri(block["uri"]), "experiment": block["experiment"]}


def fail_fast() -> None:
    """Shorten MLflow's HTTP retries (about 250 s by default) to seconds, unless already set."""
    for name, value in FAST_FAILURE_ENV.items():
        os.environ.setdefault(name, value)


def client_for(uri: str):
    """An MlflowClient for ``uri`` (the parent directory of a SQLite file created)."""
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_store(uri: str, experiment: str) -> str:
    """Create the store and experiment if absent; return the experiment id."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(experiment)


def check_tracking(uri: str, experiment: str, *, timeout: float = 5.0) -> str:
    """Make the tracking store usable before any job runs; return the experiment id.

    A server (``http(s)://``) is probed at ``/health`` within ``timeout`` seconds first; a
    SQLite store is created here, once, before parallel jobs use it.

    Raises:
        TrackingUnavailable: naming the URI, when the server does not answer or the store
            cannot be opened.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} does not answer ({err}); start it, or point "
                "MLFLOW_TRACKING_URI / tracking.uri elsewhere (nothing has run)"
            ) from None
    fail_fast()
    try:
        return ensure_store(uri, experiment)
    except Exception as err:  # noqa: BLE001 - any backend error, reported with the URI
        raise TrackingUnavailable(f"MLflow tracking store {uri} cannot be used: {err}") from None


def start_tracking(config: Mapping[str, Any]) -> str:
    """The workflow's ``onstart``: :func:`check_tracking` of the config's settings, announced on
    the console; an unusable store stops the workflow (SystemExit naming the URI) before any job
    runs. Returns the experiment id."""
    import sys

    settings = tracking_settings(config)
    try:
        experiment_id = check_tracking(settings["uri"], settings["experiment"])
    except TrackingUnavailable as err:
        print(f"caopd: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(f"caopd: MLflow tracking at {settings['uri']} (experiment {settings['experiment']!r}, "
          f"id {experiment_id})", file=sys.stderr, flush=True)
    return experiment_id


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


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


class StageRecord:
    """What the MLflow run of one key holds, kept in the artifact as ``tracking.json``.

    ``{"tags": {...}, "params": {...}, "metrics": [{"name", "value", "step"}, ...],
    "artifacts": [relative paths]}``; no timestamps, so a rebuild writes the same bytes. A
    non-finite metric value is stored as null.
    """

    def __init__(self, *, stage: str, key: str, round: int | None, upstream: Mapping[str, str],
                 params: Mapping[str, Any]):
        self.tags = {
            "caopd.stage": stage,
            "caopd.key": key,
            "caopd.round": "" if round is None else str(round),
            "caopd.upstream": json.dumps(dict(upstream), sort_keys=True),
            **{f"caopd.upstream.{role}": up for role, up in upstream.items()},
        }
        self.params = dict(params)
        self.metrics: list[dict[str, Any]] = []
        self.artifacts: list[str] = []

    def add_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record the numeric values of ``metrics`` at ``step`` (None and non-numbers skipped)."""
        for name, value in metrics.items():
            if isinstance(value, Real):
                self.metrics.append({"name": name, "value": _finite(value), "step": int(step)})

    def as_json(self) -> dict[str, Any]:
        return {"tags": self.tags, "params": self.params, "metrics": self.metrics,
                "artifacts": sorted(set(self.artifacts))}


def find_run(client, experiment_id: str, stage: str, key: str):
    """The newest MLflow run tagged with this stage and key, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`caopd.key` = '{key}' and tags.`caopd.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def open_run(client, experiment_id: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """The run of a key, created or reopened (a killed job's RUNNING run, a failed one): one run
    per key, ``caopd.attempt`` counting the attempts. Logs the tags and params; returns its id."""
    from mlflow.entities import Param, RunTag

    found = find_run(client, experiment_id, tags["caopd.stage"], tags["caopd.key"])
    if found is None:
        run_id = client.create_run(experiment_id, tags=dict(tags),
                                   run_name=f"{tags['caopd.stage']}/{tags['caopd.key']}").info.run_id
        attempt = 1
    else:
        run_id = found.info.run_id
        attempt = int(found.data.tags.get("caopd.attempt", "1")) + 1
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "caopd.previous_status", found.info.status)
        log.info("MLflow run %s of key %s reopened (it was %s)", run_id, tags["caopd.key"], found.info.status)
    client.set_tag(run_id, "caopd.attempt", str(attempt))
    items = [Param(k, v) for k, v in flatten(params).items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])
    if found is not None:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def log_metric_rows(client, run_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Log ``{"name", "value", "step"}`` rows (None values as NaN) in batches of 500."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    batch = [Metric(r["name"], math.nan if r["value"] is None else float(r["value"]), stamp, r["step"])
             for r in rows]
    for start in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[start : start + 500])


class StageRun:
    """The MLflow run of one artifact key; a tracking failure never fails the job.

    Every call is recorded in :attr:`record` first, then sent to MLflow. The first MLflow error
    is logged as a warning naming the URI, and the run is offline from then on: the job keeps
    its time and its artifact, and ``tracking.json`` holds what ``caopd track`` logs later.
    """

    def __init__(self, uri: str, experiment: str, *, stage: str, key: str, round: int | None,
                 upstream: Mapping[str, str], params: Mapping[str, Any]):
        self.uri = uri
        self.experiment = experiment
        self.record = StageRecord(stage=stage, key=key, round=round, upstream=upstream, params=params)
        self.run_id: str | None = None
        self.offline: str | None = None
        self.client = None
        fail_fast()
        self._send(self._open)

    def _send(self, action: Callable[[], Any]) -> None:
        if self.offline is not None:
            return
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any tracking failure: warn, go offline, go on
            self.offline = f"{type(err).__name__}: {err}"
            log.warning(
                "MLflow at %s failed (%s); the job goes on without it and keeps its records in %s "
                "(log them later with `caopd track`)", self.uri, self.offline.splitlines()[0][:300],
                RECORD_FILE,
            )

    def _open(self) -> None:
        self.client = client_for(self.uri)
        experiment_id = ensure_store(self.uri, self.experiment)
        self.run_id = open_run(self.client, experiment_id, self.record.tags, self.record.params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        start = len(self.record.metrics)
        self.record.add_metrics(metrics, step or 0)
        rows = self.record.metrics[start:]
        self._send(lambda: log_metric_rows(self.client, self.run_id, rows))

    def log_metric_series(self, rows: Iterable[Mapping[str, Any]], step_key: str = "step") -> None:
        """Log training curves: each row has ``step_key`` and numeric columns."""
        start = len(self.record.metrics)
        for row in rows:
            self.record.add_metrics({k: v for k, v in row.items() if k != step_key}, int(row[step_key]))
        new = self.record.metrics[start:]
        self._send(lambda: log_metric_rows(self.client, self.run_id, new))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file of the artifact (recorded by its name inside the artifact)."""
        name = Path(path).name
        self.record.artifacts.append(name if artifact_path is None else f"{artifact_path}/{name}")
        self.upload(path, artifact_path)

    def upload(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Send a file to the run without recording it (it is already in the record)."""
        self._send(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        self._send(lambda: self.client.set_terminated(self.run_id, status=status))
