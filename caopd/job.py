"""The context every workflow script runs its stage in.

Every stage module exposes ``run(job) -> summary``, taking one :class:`StageJob` (params, seed,
round, verified inputs by role as the plan names them, output dir, tracker, resources, the
checkout), and every workflow script is the same three lines::

    from caopd.job import run_stage
    from caopd.data import run
    run_stage(snakemake, run)   # verifies inputs, opens the MLflow run, logs to the log file,
                                # records the summary; on success spec.json, tracking.json and
                                # manifest.json are written and the work dir renamed to
                                # results/<stage>/<key>/

The same context can be built without Snakemake with :func:`open_job` (tests do).

Where the job runs and where it logs are read here, at run time, never from the rule's params:
the workflow root is the checkout the script lives in (``snakemake.scriptdir``) and the tracking
URI comes from :func:`caopd.tracking.tracking_settings`. MLflow never fails a job
(:class:`caopd.tracking.StageRun`); nothing after publication can make Snakemake delete the
artifact. Each attempt logs to its own file under ``logs/<stage>/<key>.attempts/``, which the
rule's log file links to, so a rerun keeps the earlier attempts' logs (:func:`setup_logging`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caopd.store import Publication, verify_artifact, write_json
from caopd.artifacts import MANIFEST, RECORD_FILE, SPEC
from caopd.tracking import StageRecord

log = logging.getLogger("caopd")

ATTEMPTS_SUFFIX = ".attempts"


@dataclass
class StageJob:
    """What a stage function needs: its params, verified inputs, output dir, seed, tracker."""

    stage: str
    key: str
    round: int | None
    params: dict[str, Any]
    inputs: dict[str, Path]
    out: Path
    seed: int
    threads: int = 1
    tracker: Any = None
    result: dict[str, Any] = field(default_factory=dict)
    upstream_manifests: dict[str, dict] = field(default_factory=dict)
    record: StageRecord | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    root: Path = Path(".")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Metrics of the run: kept in ``tracking.json`` and sent to MLflow when it tracks."""
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        elif self.record is not None:
            self.record.add_metrics(metrics, step or 0)

    def log_curves(self, rows: list[Mapping[str, Any]]) -> None:
        """Training curves (rows with a ``step``), kept and sent like :meth:`log_metrics`."""
        if self.tracker is not None and rows:
            self.tracker.log_metric_series(rows)
        elif self.record is not None:
            for row in rows:
                self.record.add_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file of the artifact to attach to the run (by its name inside the artifact)."""
        if self.tracker is not None:
            self.tracker.log_artifact(path, artifact_path)
        elif self.record is not None:
            name = Path(path).name
            self.record.artifacts.append(name if artifact_path is None else f"{artifact_path}/{name}")


def setup_logging(log_path: str | Path | None) -> Path | None:
    """Send logging and stderr (progress bars included) to the rule's log file.

    Snakemake deletes a rule's log file before it reruns the job, so each attempt writes to its
    own file, ``<log stem>.attempts/<UTC start>-<pid>.log`` beside it, and the rule's log file
    is a hard link to it (a symbolic link where hard links are not supported): a killed job's
    log survives the rerun. Returns the attempt's file (None without a log path).
    """
    attempt = None
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        attempts = log_path.with_name(log_path.stem + ATTEMPTS_SUFFIX)
        attempts.mkdir(exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        attempt = attempts / f"{stamp}-{os.getpid()}.log"
        stream = open(attempt, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        log_path.unlink(missing_ok=True)
        try:
            os.link(attempt, log_path)
        except OSError:
            try:
                log_path.symlink_to(os.path.relpath(attempt, log_path.parent))
            except OSError:
                pass  # the attempt's file is still there
        earlier = sorted(p.name for p in attempts.glob("*.log") if p != attempt)
        if earlier:
            stream.write(f"# earlier attempts of this job: {', '.join(earlier)} (in {attempts})\n")
        sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return attempt


class StaleCodeError(RuntimeError):
    """The stage's source changed after the workflow computed its key."""


def check_code_unchanged(preimage: Mapping[str, Any], root: str | Path) -> None:
    """Refuse to run a stage whose code fingerprint no longer matches its key.

    Keys are computed when Snakemake parses the workflow, but a job imports the modules when it
    starts: an edit in between would publish an artifact under a key that names other code.
    """
    from caopd.hashing import code_fingerprint
    from caopd.plan import STAGE_CODE

    stage = preimage["stage"]
    if stage not in STAGE_CODE:
        return
    now = code_fingerprint(STAGE_CODE[stage], root)
    if now != preimage["code"]:
        raise StaleCodeError(
            f"stage {stage}: its source changed since the workflow was planned (code {preimage['code']} "
            f"-> {now}); rerun snakemake so the key covers the code that runs"
        )


def _status(err: BaseException) -> str:
    return "KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED"


@contextlib.contextmanager
def open_job(
    *,
    preimage: Mapping[str, Any],
    key: str,
    seed: int,
    inputs: Mapping[str, str | Path],
    output: str | Path,
    root: str | Path = ".",
    tracking: Mapping[str, Any] | None = None,
    threads: int = 1,
    resources: Mapping[str, Any] | None = None,
) -> Iterator[StageJob]:
    """Run one stage: verify inputs, open tracking, yield the job, publish atomically.

    ``tracking`` (``{"uri", "experiment"}``, or None for no MLflow) is where the run is logged;
    it is not part of the key. The artifact always holds ``tracking.json`` (the run's tags,
    params, metrics and attached files), whether MLflow was reachable or not.
    """
    output = Path(output)
    if output.name != key:
        raise ValueError(f"output directory {output} is not named by its key {key}")
    manifests = {role: verify_artifact(path) for role, path in inputs.items()}
    pub = Publication(output, preimage)
    rnd = preimage["params"].get("round")
    tracker = None
    if tracking is not None:
        from caopd.tracking import StageRun

        tracker = StageRun(
            tracking["uri"], tracking["experiment"], stage=preimage["stage"], key=key, round=rnd,
            upstream=preimage["upstream"], params=preimage["params"],
        )
        record = tracker.record
    else:
        record = StageRecord(stage=preimage["stage"], key=key, round=rnd,
                             upstream=preimage["upstream"], params=preimage["params"])
    job = StageJob(
        stage=preimage["stage"],
        key=key,
        round=rnd,
        params=dict(preimage["params"]),
        inputs={role: Path(p) for role, p in inputs.items()},
        out=pub.work,
        seed=seed,
        threads=threads,
        tracker=tracker,
        upstream_manifests=manifests,
        record=record,
        resources=dict(resources or {}),
        root=Path(root),
    )
    log.info("stage %s key %s: start (inputs: %s)", job.stage, key, dict(inputs))
    try:
        yield job
        record.artifacts += [MANIFEST, SPEC, RECORD_FILE]
        write_json(pub.work / RECORD_FILE, record.as_json())
        manifest = pub.publish(
            {"round": job.round, "seed": job.seed, "result": job.result,
             "mlflow_run_id": tracker.run_id if tracker else None},
            root,
        )
    except BaseException as err:
        pub.abandon()
        if tracker is not None:
            tracker.end(_status(err))
        raise
    # published: from here on nothing may fail the job (Snakemake would delete the artifact)
    if tracker is not None:
        try:
            for name in (MANIFEST, SPEC, RECORD_FILE):
                tracker.upload(output / name)
            tracker.end()
        except Exception as err:  # noqa: BLE001 - StageRun already swallows; belt and braces
            log.warning("stage %s key %s: MLflow after publication failed: %s", job.stage, key, err)
    log.info("stage %s key %s: published %d files", job.stage, key, len(manifest["files"]))


def workflow_root(smk: Any) -> Path:
    """The checkout a Snakemake script runs from: two levels above ``workflow/scripts/``."""
    return Path(smk.scriptdir).resolve().parents[1]


def _terminate_as_exit(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def stage_job(smk: Any) -> Iterator[StageJob]:
    """:func:`open_job` from a Snakemake ``snakemake`` script object.

    The root and the tracking settings are read here (:func:`workflow_root`,
    :func:`caopd.tracking.tracking_settings` of ``snakemake.config``), never from params. A
    SIGTERM (a cancelled cluster job, Ctrl-C in Snakemake) ends the job through the same path as
    an error, so its MLflow run is marked KILLED.
    """
    from caopd.tracking import tracking_settings

    setup_logging(smk.log[0] if smk.log else None)
    signal.signal(signal.SIGTERM, _terminate_as_exit)
    root = workflow_root(smk)
    check_code_unchanged(smk.params.spec, root)
    with open_job(
        preimage=smk.params.spec,
        key=smk.wildcards.key,
        seed=smk.params.seed,
        inputs={name: smk.input[name] for name in smk.input.keys()},
        output=smk.output[0],
        root=root,
        tracking=tracking_settings(smk.config),
        threads=smk.threads,
        resources=dict(smk.resources.items()),
    ) as job:
        yield job


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The floats of a stage's summary: what MLflow records of it as metrics (bools and ints,
    counts and flags, stay in the manifest only)."""
    return {k: v for k, v in summary.items() if isinstance(v, float)}


def run_stage(smk: Any, run: Callable[[StageJob], Mapping[str, Any]]) -> None:
    """The stage contract: run a stage module's ``run(job) -> summary`` in :func:`stage_job`.

    Every workflow script is ``run_stage(snakemake, <stage module>.run)``. The summary goes into
    the manifest (``result``) and its floats into the run's metrics: the one place a stage's
    summary is logged.
    """
    with stage_job(smk) as job:
        summary = dict(run(job))
        job.result.update(summary)
        job.log_metrics(summary_metrics(summary))
