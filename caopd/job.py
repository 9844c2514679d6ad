"""The context every workflow script runs its stage in.

A workflow script is a thin adapter::

    from caopd.job import stage_job
    with stage_job(snakemake) as job:        # verifies inputs, opens the MLflow run, logs to the log file
        result = prepare_data(job.params, out_dir=job.out)
        job.result.update(result)            # small summary recorded in manifest.json
    # on success: spec.json + manifest.json written, the work dir renamed to results/<stage>/<key>/

The same context can be built without Snakemake with :func:`open_job` (tests do).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caopd.store import Publication, verify_artifact

log = logging.getLogger("caopd")


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

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)

    def log_curves(self, rows: list[Mapping[str, Any]]) -> None:
        if self.tracker is not None and rows:
            self.tracker.log_metric_series(rows)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_artifact(path, artifact_path)


def setup_logging(log_path: str | Path | None) -> None:
    """Send logging and stderr (progress bars included) to the rule's log file."""
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


class StaleCodeError(RuntimeError):
    """The stage's source changed after the workflow computed its key."""


def check_code_unchanged(preimage: Mapping[str, Any], root: str | Path) -> None:
    """Refuse to run a stage whose code fingerprint no longer matches its key.

    Keys are computed when Snakemake parses the workflow, but a job imports the modules when it
    starts: an edit in between would publish an artifact under a key that names other code.
    """
    from caopd.plan import STAGE_CODE, code_fingerprint

    stage = preimage["stage"]
    if stage not in STAGE_CODE:
        return
    now = code_fingerprint(STAGE_CODE[stage], root)
    if now != preimage["code"]:
        raise StaleCodeError(
            f"stage {stage}: its source changed since the workflow was planned (code {preimage['code']} "
            f"-> {now}); rerun snakemake so the key covers the code that runs"
        )


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
) -> Iterator[StageJob]:
    """Run one stage: verify inputs, open tracking, yield the job, publish atomically."""
    output = Path(output)
    if output.name != key:
        raise ValueError(f"output directory {output} is not named by its key {key}")
    manifests = {role: verify_artifact(path) for role, path in inputs.items()}
    pub = Publication(output, preimage)
    tracker = None
    if tracking is not None:
        from caopd.tracking import StageRun

        tracker = StageRun(
            tracking["uri"],
            tracking["experiment"],
            stage=preimage["stage"],
            key=key,
            round=preimage["params"].get("round"),
            upstream=preimage["upstream"],
            params=preimage["params"],
        )
    job = StageJob(
        stage=preimage["stage"],
        key=key,
        round=preimage["params"].get("round"),
        params=dict(preimage["params"]),
        inputs={role: Path(p) for role, p in inputs.items()},
        out=pub.work,
        seed=seed,
        threads=threads,
        tracker=tracker,
        upstream_manifests=manifests,
    )
    log.info("stage %s key %s: start (inputs: %s)", job.stage, key, dict(inputs))
    try:
        yield job
        manifest = pub.publish(
            {"round": job.round, "seed": job.seed, "result": job.result,
             "mlflow_run_id": tracker.run_id if tracker else None},
            root,
        )
    except BaseException:
        pub.abandon()
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if tracker is not None:
        tracker.log_artifact(output / "manifest.json")
        tracker.log_artifact(output / "spec.json")
        tracker.end()
    log.info("stage %s key %s: published %d files", job.stage, key, len(manifest["files"]))


@contextlib.contextmanager
def stage_job(smk: Any) -> Iterator[StageJob]:
    """:func:`open_job` from a Snakemake ``snakemake`` script object."""
    setup_logging(smk.log[0] if smk.log else None)
    check_code_unchanged(smk.params.spec, smk.params.root)
    inputs = {name: smk.input[name] for name in smk.input.keys() if name != "tracking"}
    with open_job(
        preimage=smk.params.spec,
        key=smk.wildcards.key,
        seed=smk.params.seed,
        inputs=inputs,
        output=smk.output[0],
        root=smk.params.root,
        tracking=smk.params.tracking,
        threads=smk.threads,
    ) as job:
        yield job
