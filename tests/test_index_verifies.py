"""Issue 13 row 3: readers of the index verify what they read; a hand-edited metrics.json is an
error naming the file, never a number in a table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from caopd.index import read_index, read_metrics, stage_dirs, write_index
from caopd.job import open_job
from caopd.hashing import canonical_json
from caopd.store import ArtifactError


def _evaluate_artifact(root: Path) -> Path:
    pre = {"stage": "evaluate", "params": {"split": "eval"}, "code": "c", "upstream": {}}
    key = hashlib.sha256(canonical_json(pre).encode()).hexdigest()[:16]
    out = root / "results" / "evaluate" / key
    with open_job(preimage=pre, key=key, seed=0, inputs={}, output=out, root=root) as job:
        (job.out / "metrics.json").write_text(json.dumps({"accuracy": 0.41, "ece": 0.2}) + "\n")
    return out


@pytest.fixture()
def run(tmp_path) -> Path:
    artifact = _evaluate_artifact(tmp_path)
    stages = [{"stage": "evaluate", "round": None, "key": artifact.name,
               "path": str(artifact.relative_to(tmp_path))}]
    index_dir = tmp_path / "results" / "index"
    index_dir.mkdir(parents=True)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)  # the index's paths are relative to the working directory, as in a run
    try:
        write_index("caopd", stages, index_dir / "caopd.json", tracking=None)
    finally:
        os.chdir(cwd)
    return tmp_path


def test_verified_metrics_read_back(run):
    assert read_metrics(run / "results" / "index", "caopd")["accuracy"] == 0.41


def test_a_hand_edited_metrics_json_is_refused_naming_it(run):
    index_dir = run / "results" / "index"
    metrics = run / read_index(index_dir, "caopd")["metrics"]
    metrics.write_text(metrics.read_text().replace("0.41", "0.99"))  # accuracy edited to 0.99
    for read in (read_metrics, read_index):
        with pytest.raises(ArtifactError, match=rf"{metrics}: .*does not match the manifest"):
            read(index_dir, "caopd")
    index = json.loads((index_dir / "caopd.json").read_text())
    with pytest.raises(ArtifactError, match="metrics.json"):
        stage_dirs(index, "evaluate", run)
