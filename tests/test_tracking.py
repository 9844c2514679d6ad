"""MLflow tracking against a temporary SQLite store: one run per key, tagged; a variant parent run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from caopd.index import write_index
from caopd.job import open_job
from caopd.hashing import canonical_json
from caopd.tracking import DEFAULT_URI, ensure_store, tracking_uri


@pytest.fixture()
def store(tmp_path) -> dict:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri, "test")
    return {"uri": uri, "experiment": "test"}


def _job(root: Path, tracking: dict, stage: str, upstream: dict, inputs: dict) -> Path:
    pre = {"stage": stage, "params": {"round": 1, "lr": 0.001}, "code": "abc", "upstream": upstream}
    key = hashlib.sha256(canonical_json(pre).encode()).hexdigest()[:16]
    out = root / "results" / stage / key
    with open_job(preimage=pre, key=key, seed=0, inputs=inputs, output=out, root=root, tracking=tracking) as job:
        (job.out / "a.txt").write_text(stage)
        job.log_metrics({"loss": 0.5}, step=1)
        job.log_curves([{"step": 1, "loss": 0.4}, {"step": 2, "loss": 0.3}])
    return out


def test_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None) == DEFAULT_URI
    assert tracking_uri("http://server:5000") == "http://server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other")
    assert tracking_uri("http://server:5000") == "http://other"


def test_one_run_per_key_with_tags_and_a_variant_parent(tmp_path, store):
    import mlflow

    up = _job(tmp_path, store, "rollouts", {}, {})
    down = _job(tmp_path, store, "targets", {"rollouts": up.name}, {"rollouts": up})
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("test")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`caopd.key` = '{down.name}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["caopd.stage"] == "targets"
    assert run.data.tags["caopd.round"] == "1"
    assert run.data.tags["caopd.upstream.rollouts"] == up.name
    assert run.data.params["lr"] == "0.001"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 1, 2]
    import json

    manifest = json.loads((down / "manifest.json").read_text())
    assert manifest["mlflow_run_id"] == run.info.run_id

    index = write_index(
        "toy",
        [{"stage": "rollouts", "round": 1, "key": up.name, "path": str(up)},
         {"stage": "targets", "round": 1, "key": down.name, "path": str(down)}],
        tmp_path / "index.json",
        store,
    )
    assert [e["mlflow_run_id"] for e in index["stages"]] == [
        json.loads((up / "manifest.json").read_text())["mlflow_run_id"], run.info.run_id
    ]
    parent = client.get_run(index["mlflow_run_id"])
    assert parent.data.tags["caopd.variant"] == "toy"
    assert parent.data.params["targets.r1.key"] == down.name
    assert client.get_run(run.info.run_id).data.tags["caopd.variant.toy"] == parent.info.run_id


def test_a_failed_job_marks_its_run_failed(tmp_path, store):
    import mlflow

    pre = {"stage": "distill", "params": {}, "code": "x", "upstream": {}}
    key = hashlib.sha256(canonical_json(pre).encode()).hexdigest()[:16]
    with pytest.raises(RuntimeError):
        with open_job(preimage=pre, key=key, seed=0, inputs={}, output=tmp_path / key, root=tmp_path, tracking=store):
            raise RuntimeError("killed")
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("test")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`caopd.key` = '{key}'")
    assert run.info.status == "FAILED"


# --- issue 13 rows 2 and 4: an outage costs no artifact; a key keeps one run; logs are kept ------

import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from caopd.store import verify_artifact  # noqa: E402
from caopd.tracking import TrackingUnavailable, check_tracking, start_tracking  # noqa: E402


def _dead_uri() -> str:
    """An http URI on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _preimage(stage: str = "evaluate") -> tuple[dict, str]:
    pre = {"stage": stage, "params": {"round": None, "n_bins": 10}, "code": "c", "upstream": {}}
    return pre, hashlib.sha256(canonical_json(pre).encode()).hexdigest()[:16]


def test_an_unreachable_server_is_refused_within_seconds_naming_it(monkeypatch, capsys):
    uri = _dead_uri()
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=f"MLflow tracking server {uri} does not answer"):
        check_tracking(uri, "test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(SystemExit):
        start_tracking({"variants": {"v": {}}})
    assert f"caopd: MLflow tracking server {uri} does not answer" in capsys.readouterr().err
    assert time.monotonic() - started < 15


def test_start_tracking_creates_the_sqlite_store_once_and_names_it(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment_id = start_tracking({"tracking": {"experiment": "exp"}, "variants": {"v": {}}})
    assert (tmp_path / "fresh" / "mlflow.db").is_file()
    assert f"caopd: MLflow tracking at {uri} (experiment 'exp', id {experiment_id})" in capsys.readouterr().err
    assert start_tracking({"tracking": {"experiment": "exp"}, "variants": {"v": {}}}) == experiment_id


def test_an_outage_inside_a_job_warns_and_keeps_the_artifact_and_its_records(tmp_path, caplog):
    """Row 2: the job is not slowed by retries, publishes, and keeps what the run would hold."""
    uri = _dead_uri()
    pre, key = _preimage()
    out = tmp_path / "results" / "evaluate" / key
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        with open_job(preimage=pre, key=key, seed=0, inputs={}, output=out, root=tmp_path,
                      tracking={"uri": uri, "experiment": "test"}) as job:
            (job.out / "metrics.json").write_text('{"ece": 0.1}\n')
            for step in range(20):
                job.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            job.log_artifact(job.out / "metrics.json")
    assert time.monotonic() - started < 30
    manifest = verify_artifact(out)
    assert manifest["mlflow_run_id"] is None
    record = json.loads((out / "tracking.json").read_text())
    assert [m["step"] for m in record["metrics"]] == list(range(20))
    assert record["tags"]["caopd.key"] == key
    assert record["artifacts"] == ["manifest.json", "metrics.json", "spec.json", "tracking.json"]
    assert any(uri in r.getMessage() and "caopd track" in r.getMessage() for r in caplog.records)

    # ... and `caopd track` logs it later, once
    from caopd.cli import main

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["track", "--results", str(tmp_path / "results"), "--uri", store, "--experiment", "test"]
    assert main(argv) == 0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("test")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`caopd.key` = '{key}'")
    assert run.info.status == "FINISHED" and run.data.tags["caopd.ingested"] == "true"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "manifest.json"}
    assert main(argv) == 0
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20  # nothing logged twice


def test_a_tracking_failure_after_publication_does_not_lose_the_artifact(tmp_path, store, monkeypatch):
    """Row 2: the published artifact survives an MLflow error in the steps after publish()."""
    import mlflow

    def broken(*args, **kwargs):
        raise RuntimeError("server went away")

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", broken)
    pre, key = _preimage()
    out = tmp_path / key
    with open_job(preimage=pre, key=key, seed=0, inputs={}, output=out, root=tmp_path, tracking=store) as job:
        (job.out / "a.txt").write_text("a")
    assert verify_artifact(out)["mlflow_run_id"]


def test_a_killed_jobs_run_is_reopened_not_duplicated(tmp_path, store):
    """Row 4: a job killed without a word leaves its run RUNNING; the rerun reopens that run."""
    import mlflow

    from caopd.tracking import StageRun

    pre, key = _preimage("distill")
    killed = StageRun(store["uri"], store["experiment"], stage="distill", key=key, round=None,
                      upstream={}, params=pre["params"])  # never ended: SIGKILL
    with open_job(preimage=pre, key=key, seed=0, inputs={}, output=tmp_path / key, root=tmp_path,
                  tracking=store) as job:
        (job.out / "a.txt").write_text("a")
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("test")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`caopd.key` = '{key}'")
    assert run.info.run_id == killed.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["caopd.attempt"] == "2" and run.data.tags["caopd.previous_status"] == "RUNNING"


def test_a_rerun_keeps_the_earlier_attempts_log(tmp_path, monkeypatch):
    """Row 4: Snakemake deletes the rule's log before a rerun; the attempts stay beside it."""
    from caopd.job import setup_logging

    monkeypatch.setattr(sys, "stderr", sys.stderr)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    log_path = tmp_path / "logs" / "distill" / "0123456789abcdef.log"
    first = setup_logging(log_path)
    logging.getLogger("caopd").info("first attempt, killed")
    log_path.unlink()  # what Snakemake does before it reruns the job
    second = setup_logging(log_path)
    logging.getLogger("caopd").info("second attempt")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert first != second and first.parent == second.parent == tmp_path / "logs" / "distill" / "0123456789abcdef.attempts"
    assert "first attempt, killed" in first.read_text()
    assert "second attempt" in log_path.read_text() and "first attempt" not in log_path.read_text()
    assert first.name in log_path.read_text()  # the new log names the earlier attempt


def test_a_server_lost_mid_job_costs_no_metric(tmp_path, store, monkeypatch):
    """Row 2: MLflow fails after the run opened (server killed while base_model trains): the
    job finishes, the run is left RUNNING with what reached it, and `caopd track` completes it
    without logging a metric twice."""
    import mlflow

    from caopd.cli import main

    calls = {"n": 0}
    real = mlflow.MlflowClient.log_batch

    def dies_after_two(self, run_id, metrics=(), *args, **kwargs):
        if metrics:
            calls["n"] += 1
            if calls["n"] > 2:
                raise ConnectionError("server killed")
        return real(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", dies_after_two)
    pre, key = _preimage("base_model")
    out = tmp_path / "results" / "base_model" / key
    with open_job(preimage=pre, key=key, seed=0, inputs={}, output=out, root=tmp_path, tracking=store) as job:
        (job.out / "model.bin").write_bytes(b"weights")
        for step in range(1, 6):
            job.log_metrics({"warmup_loss": 1.0 / step}, step=step)
    manifest = verify_artifact(out)
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.info.status == "RUNNING" and len(client.get_metric_history(run.info.run_id, "warmup_loss")) == 2
    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", real)
    assert main(["track", "--results", str(tmp_path / "results"), "--uri", store["uri"], "--experiment", "test"]) == 0
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "warmup_loss")) == [1, 2, 3, 4, 5]
