"""``caopd track``: log into MLflow what jobs recorded while the tracking store was unreachable.

Every artifact holds ``tracking.json`` (:class:`caopd.tracking.StageRecord`): the tags, params,
metrics and attached files of its MLflow run. :func:`ingest` walks ``results/<stage>/<key>/``,
verifies each artifact against its manifest, and logs the record of every key whose run is
missing or not FINISHED (reopening the key's run, so a key still has one run; metrics the run
already holds are not logged twice). Then every ``results/index/<variant>.json`` gets the run
ids of its stages and, where it has none, its variant's parent run. Running it again logs
nothing new. ::

    caopd track                        # results/ of the working directory, MLFLOW_TRACKING_URI or the default
    caopd track --results runs/seed1/results --uri http://mlflow:5000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.index import log_variant
from caopd.store import read_json, verify_artifact, write_json
from caopd.tracking import (
    RECORD_FILE,
    client_for,
    ensure_store,
    fail_fast,
    find_run,
    log_metric_rows,
    open_run,
)

log = logging.getLogger(__name__)

#: Directories of ``results/`` that hold no keyed artifacts.
NOT_STAGES = frozenset({"index", "compare"})


def _new_metrics(client, run, rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of ``rows`` whose (name, step) the run does not hold yet."""
    if run is None:
        return rows
    held = {(m.key, m.step) for name in run.data.metrics for m in client.get_metric_history(run.info.run_id, name)}
    return [row for row in rows if (row["name"], row["step"]) not in held]


def ingest_artifact(client, experiment_id: str, directory: Path) -> str | None:
    """Log one verified artifact's record unless its key has a FINISHED run; the run id logged
    to, or None when there was nothing to do (or the artifact has no record)."""
    record_path = directory / RECORD_FILE
    if not record_path.is_file():
        return None
    verify_artifact(directory)
    record = read_json(record_path)
    tags = record["tags"]
    found = find_run(client, experiment_id, tags["caopd.stage"], tags["caopd.key"])
    if found is not None and found.info.status == "FINISHED":
        return None
    rows = _new_metrics(client, found, record["metrics"])
    run_id = open_run(client, experiment_id, tags, record["params"])
    client.set_tag(run_id, "caopd.ingested", "true")
    log_metric_rows(client, run_id, rows)
    for name in record["artifacts"]:
        path = directory / name
        if path.is_file():
            parent = Path(name).parent.as_posix()
            client.log_artifact(run_id, str(path), None if parent == "." else parent)
    client.set_terminated(run_id)
    return run_id


def ingest(results: str | Path, uri: str, experiment: str) -> dict[str, int]:
    """Log every unlogged record under ``results`` and complete the variant indexes (module
    docstring). Returns counts: ``artifacts`` seen, ``logged`` runs, ``variants`` parent runs.

    Raises:
        caopd.store.ArtifactError: naming a file of an artifact that does not match its manifest.
        FileNotFoundError: ``results`` is not a directory.
    """
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: no results directory here")
    fail_fast()
    client = client_for(uri)
    experiment_id = ensure_store(uri, experiment)
    counts = {"artifacts": 0, "logged": 0, "variants": 0}
    for manifest in sorted(results.glob("*/*/manifest.json")):
        directory = manifest.parent
        if directory.parent.name in NOT_STAGES or directory.parent.name.startswith("."):
            continue
        counts["artifacts"] += 1
        if ingest_artifact(client, experiment_id, directory) is not None:
            counts["logged"] += 1
    root = results.parent
    for index_path in sorted((results / "index").glob("*.json")):
        index = read_json(index_path)
        changed = False
        for entry in index["stages"]:
            if not entry.get("mlflow_run_id"):
                found = find_run(client, experiment_id, entry["stage"], entry["key"])
                if found is not None:
                    entry["mlflow_run_id"] = found.info.run_id
                    changed = True
        if not index.get("mlflow_run_id"):
            metrics = None
            if index.get("metrics"):
                verify_artifact(root / Path(index["metrics"]).parent)
                metrics = read_json(root / index["metrics"])
            index["mlflow_run_id"] = log_variant(uri, experiment, index["variant"], index, metrics, index_path)
            counts["variants"] += 1
            changed = True
        if changed:
            write_json(index_path, index)
    return counts


def run_track(args: argparse.Namespace) -> int:
    """``caopd track``: :func:`ingest`, counts printed as JSON; exit status 2 on an error."""
    from caopd.store import ArtifactError
    from caopd.tracking import tracking_uri

    uri = args.uri or tracking_uri(None)
    try:
        counts = ingest(args.results, uri, args.experiment)
    except (ArtifactError, FileNotFoundError) as err:
        print(f"caopd track: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the store: name it, no traceback
        print(f"caopd track: error: MLflow at {uri}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"uri": uri, **counts}))
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``caopd track`` on the ``caopd`` parser (:mod:`caopd.cli`)."""
    parser = subparsers.add_parser(
        "track",
        help="log into MLflow the records of jobs that ran while it was unreachable",
        description="Log every artifact's tracking.json whose MLflow run is missing or unfinished, "
        "and the variant runs of results/index/ (caopd.ingest).",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results)")
    parser.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI, else the SQLite default)")
    parser.add_argument("--experiment", default="caopd", help="MLflow experiment (default caopd)")
    parser.set_defaults(handler=run_track)
