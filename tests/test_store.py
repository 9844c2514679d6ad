"""The artifact store: atomic publication, manifests, corruption detected naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from caopd.job import open_job
from caopd.store import ArtifactError, Publication, verify_artifact


def _preimage(stage: str = "toy", upstream: dict | None = None) -> dict:
    return {"stage": stage, "params": {"x": 1}, "code": "c0de", "upstream": upstream or {}}


def _key(preimage: dict) -> str:
    import hashlib

    from caopd.hashing import canonical_json

    return hashlib.sha256(canonical_json(preimage).encode()).hexdigest()[:16]


def _publish(root: Path, content: bytes = b"hello", stage: str = "toy", upstream=None, inputs=None) -> Path:
    pre = _preimage(stage, upstream)
    out = root / "results" / stage / _key(pre)
    with open_job(preimage=pre, key=_key(pre), seed=1, inputs=inputs or {}, output=out, root=root) as job:
        (job.out / "sub").mkdir()
        (job.out / "sub" / "data.bin").write_bytes(content)
        job.result["n"] = 1
    return out


def test_publication_writes_spec_and_manifest(tmp_path):
    out = _publish(tmp_path)
    manifest = verify_artifact(out)
    assert set(manifest["files"]) == {"spec.json", "tracking.json", "sub/data.bin"}
    assert manifest["files"]["sub/data.bin"]["size"] == 5
    assert manifest["result"] == {"n": 1}
    assert manifest["seed"] == 1  # the draw the job was given, for provenance
    assert {"git_commit", "packages", "host", "started", "ended", "mlflow_run_id"} <= set(manifest)
    assert json.loads((out / "spec.json").read_text()) == _preimage()
    assert not list(out.parent.glob(".tmp-*"))


def test_a_failing_job_leaves_no_keyed_directory(tmp_path):
    pre = _preimage()
    out = tmp_path / "results" / "toy" / _key(pre)
    with pytest.raises(RuntimeError, match="boom"):
        with open_job(preimage=pre, key=_key(pre), seed=1, inputs={}, output=out, root=tmp_path) as job:
            (job.out / "half.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert not list(out.parent.glob(".tmp-*"))


def test_a_killed_job_leaves_only_a_temp_dir_that_the_rerun_removes(tmp_path):
    pre = _preimage()
    out = tmp_path / "results" / "toy" / _key(pre)
    stale = Publication(out, pre)  # a job killed before publishing: its work dir remains
    (stale.work / "half.bin").write_bytes(b"half")
    assert not out.exists()
    assert _publish(tmp_path) == out
    assert not list(out.parent.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete"])
def test_corruption_is_detected_naming_the_file(tmp_path, damage):
    out = _publish(tmp_path)
    target = out / "sub" / "data.bin"
    if damage == "edit":
        target.write_bytes(b"jello")
    elif damage == "truncate":
        target.write_bytes(b"hel")
    else:
        target.unlink()
    with pytest.raises(ArtifactError, match=r"sub/data\.bin"):
        verify_artifact(out)


def test_a_downstream_job_refuses_a_corrupted_input(tmp_path):
    upstream = _publish(tmp_path)
    (upstream / "sub" / "data.bin").write_bytes(b"jello")
    with pytest.raises(ArtifactError, match="data.bin"):
        _publish(tmp_path, stage="down", upstream={"up": upstream.name}, inputs={"up": upstream})
    assert not (tmp_path / "results" / "down").exists() or not any(
        p for p in (tmp_path / "results" / "down").iterdir() if not p.name.startswith(".")
    )


def test_an_edited_spec_no_longer_matches_its_key(tmp_path):
    out = _publish(tmp_path)
    spec = json.loads((out / "spec.json").read_text())
    spec["params"]["x"] = 2
    (out / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="spec.json"):
        verify_artifact(out)


def test_published_artifacts_are_immutable(tmp_path):
    out = _publish(tmp_path)
    pub = Publication(out, _preimage())
    (pub.work / "x").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="immutable"):
        pub.publish({}, tmp_path)


def test_output_must_be_named_by_its_key(tmp_path):
    with pytest.raises(ValueError, match="not named by its key"):
        with open_job(preimage=_preimage(), key="0" * 16, seed=1, inputs={}, output=tmp_path / "x", root=tmp_path):
            pass


def test_same_key_reproduces_byte_identical_outputs(tmp_path):
    first = verify_artifact(_publish(tmp_path / "a"))["files"]
    second = verify_artifact(_publish(tmp_path / "b"))["files"]
    assert first == second
    assert os.path.basename(str(tmp_path / "a")) != os.path.basename(str(tmp_path / "b"))


def test_a_stage_whose_code_changed_after_planning_refuses_to_run(tmp_path):
    import shutil

    from caopd.job import StaleCodeError, check_code_unchanged
    from caopd.hashing import code_fingerprint
    from caopd.plan import STAGE_CODE

    root = Path(__file__).resolve().parent.parent
    tree = tmp_path / "repo"
    for part in ("caopd", "workflow"):
        shutil.copytree(root / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    pre = {"stage": "targets", "params": {}, "code": code_fingerprint(STAGE_CODE["targets"], tree), "upstream": {}}
    check_code_unchanged(pre, tree)
    (tree / "caopd" / "targets.py").write_text((tree / "caopd" / "targets.py").read_text() + "\n# edited\n")
    with pytest.raises(StaleCodeError, match="targets"):
        check_code_unchanged(pre, tree)


def test_a_sealed_checkpoint_with_flipped_bits_is_refused(tmp_path):
    """Issue 13 row 3: what a resume reads is verified first (caopd.store.seal / verify_sealed)."""
    from caopd.store import ArtifactError, seal, verify_sealed

    ckpt = tmp_path / "step-00000004"
    (ckpt / "state").mkdir(parents=True)
    (ckpt / "state" / "optimizer.pt").write_bytes(bytes(range(64)))
    (ckpt / "student.safetensors").write_bytes(b"w" * 32)
    table = seal(ckpt)
    assert verify_sealed(ckpt) == table and set(table) == {"state/optimizer.pt", "student.safetensors"}
    data = bytearray((ckpt / "state" / "optimizer.pt").read_bytes())
    data[10] ^= 0x01  # one flipped bit, same size
    (ckpt / "state" / "optimizer.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"state/optimizer\.pt: sha256 .* does not match .*checksums\.json"):
        verify_sealed(ckpt)
    (ckpt / "state" / "optimizer.pt").write_bytes(bytes(range(64)))
    (ckpt / "extra.pt").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"extra\.pt: not listed"):
        verify_sealed(ckpt)
    (ckpt / "extra.pt").unlink()
    (ckpt / "checksums.json").unlink()
    with pytest.raises(ArtifactError, match=r"checksums\.json: missing"):
        verify_sealed(ckpt)


def test_first_difference_names_the_first_missing_changed_or_unrecorded_file():
    """The one comparison behind verify_digests and verify_sealed, on hand-made tables."""
    from caopd.hashing import first_difference

    recorded = {"b": "2", "a": "1"}
    assert first_difference({"a": "1", "b": "2"}, recorded) is None
    assert first_difference({"b": "2"}, recorded) == ("missing", "a")
    assert first_difference({"a": "1", "b": "3"}, recorded) == ("changed", "b")
    assert first_difference({"a": "0"}, recorded) == ("changed", "a")  # sorted: a before b's absence
    assert first_difference({"a": "1", "b": "2", "d": "4", "c": "3"}, recorded) == ("unrecorded", "c")
    assert first_difference({"a": {"sha256": "1", "size": 2}}, {"a": {"sha256": "1", "size": 3}}) == ("changed", "a")
