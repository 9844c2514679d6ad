"""MLflow tracking against a temporary SQLite store: one run per key, tagged; a variant parent run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from caopd.index import write_index
from caopd.job import open_job
from caopd.plan import canonical_json
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
