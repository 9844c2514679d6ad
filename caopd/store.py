"""The content-addressed artifact store (DESIGN §4).

An artifact is a directory ``results/<stage>/<key>/`` holding the stage's outputs plus

- ``spec.json``: the preimage of the key (stage, params, code fingerprint, upstream keys);
- ``manifest.json``: sha256 and size of every output file, git commit, package versions, host,
  start/end times, the MLflow run id, the seed the job was given and the stage's small result
  summary.

Publication is atomic: a job writes into ``results/<stage>/.tmp-<key>-<pid>/`` and renames it to
its key when everything is written, so a job that dies leaves no half-written keyed directory.
Reading an upstream artifact goes through :func:`verify_artifact`, which checks every file's
sha256 against the upstream manifest and names the file that does not match.

A directory that is not an artifact but is read back later (a resume checkpoint under
``results/.work/``) is sealed the same way: :func:`seal` writes ``checksums.json`` (sha256 and
size of every file) as the last step of writing it, and :func:`verify_sealed` checks it before
anything is loaded from it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from caopd.artifacts import CHECKSUMS, MANIFEST, SPEC
from caopd.hashing import digest, first_difference, sha256_file

PROVENANCE_PACKAGES = (
    "caopd",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "datasets",
    "numpy",
    "pandas",
    "pyarrow",
    "mlflow",
    "snakemake",
    "vllm",
)


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupted or was edited after publication (names the file)."""


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) whole: to a temporary file beside ``path``, then a rename, so a
    reader never sees half of it; the temporary file is removed if the write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline), written whole
    (:func:`write_text`)."""
    write_text(path, json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def file_table(directory: str | Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "size"}}`` of every file under ``directory`` but ``exclude``."""
    directory = Path(directory)
    table = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in exclude:
            continue
        table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def verify_artifact(directory: str | Path) -> dict[str, Any]:
    """Check every file of a published artifact against its manifest; return the manifest.

    Raises :class:`ArtifactError` naming the first missing, resized or altered file.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing; {directory} is not a published artifact")
    manifest = read_json(manifest_path)
    for rel, entry in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {manifest_path} but missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise ArtifactError(
                f"{path}: size {size} does not match the manifest ({entry['size']}); "
                "the artifact was modified after publication — delete its directory to rebuild it"
            )
        found = sha256_file(path)
        if found != entry["sha256"]:
            raise ArtifactError(
                f"{path}: sha256 {found[:12]}… does not match the manifest "
                f"({entry['sha256'][:12]}…); the artifact was modified after publication — "
                "delete its directory to rebuild it"
            )
    spec_path = directory / SPEC
    if spec_path.is_file():
        expected_key = directory.name
        key = digest(read_json(spec_path))
        if key != expected_key:
            raise ArtifactError(f"{spec_path}: hashes to key {key}, not to its directory's name {expected_key}")
    return manifest


def seal(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Write ``checksums.json`` (:func:`file_table` of every other file) into ``directory``; call
    it last, after every file is written. Returns the table."""
    table = file_table(directory, exclude=(CHECKSUMS,))
    write_json(Path(directory) / CHECKSUMS, table)
    return table


def verify_sealed(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Check a :func:`seal`-ed directory before reading it: every file listed, with its size and
    sha256, and no other file.

    Raises:
        ArtifactError: naming ``checksums.json`` when it is missing or unreadable, or the first
            file that is missing, altered or not listed.
    """
    directory = Path(directory)
    path = directory / CHECKSUMS
    try:
        recorded = read_json(path)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: missing or unreadable ({err}); {directory} is not sealed") from None
    found = file_table(directory, exclude=(CHECKSUMS,))
    difference = first_difference(found, recorded)
    if difference is None:
        return recorded
    kind, rel = difference
    if kind == "missing":
        raise ArtifactError(f"{directory / rel}: listed in {path} but missing")
    if kind == "changed":
        entry = recorded[rel]
        raise ArtifactError(
            f"{directory / rel}: sha256 {found[rel]['sha256'][:12]}… (size {found[rel]['size']}) does not "
            f"match {path} ({entry['sha256'][:12]}…, size {entry['size']}); it changed after it was written"
        )
    raise ArtifactError(f"{directory / rel}: not listed in {path}; it was added after sealing")


def git_commit(root: str | Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Publication:
    """A keyed directory being written: ``work`` is where outputs go until :meth:`publish`."""

    def __init__(self, final: str | Path, preimage: Mapping[str, Any]):
        self.final = Path(final)
        self.preimage = dict(preimage)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.work = self.final.parent / f".tmp-{self.final.name}-{os.getpid()}"
        for stale in self.final.parent.glob(f".tmp-{self.final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed job of the same key
        self.work.mkdir()
        self.started = now()

    def publish(self, extra_manifest: Mapping[str, Any], root: str | Path) -> dict[str, Any]:
        """Write spec and manifest, then rename the work directory to its key atomically."""
        write_json(self.work / SPEC, self.preimage)
        manifest = {
            "stage": self.preimage["stage"],
            "key": self.final.name,
            "files": file_table(self.work),
            "git_commit": git_commit(root),
            "packages": package_versions(),
            "host": platform.node(),
            "python": platform.python_version(),
            "started": self.started,
            "ended": now(),
            **extra_manifest,
        }
        write_json(self.work / MANIFEST, manifest)
        if self.final.exists():
            if self.final.is_dir() and not any(self.final.iterdir()):
                self.final.rmdir()  # an empty directory a scheduler may have created for us
            else:
                raise ArtifactError(
                    f"{self.final}: already published; artifacts are immutable (delete it to rebuild)"
                )
        os.replace(self.work, self.final)
        return manifest

    def abandon(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
