"""Where a run's inputs come from: local paths and the local Hugging Face cache, checked at load,
and the sha256 of local files, verified on every read.

Nothing here downloads: a hub id (``Qwen/Qwen3-8B``, ``org/dataset``) names what is already in the
local Hugging Face cache (``HF_HUB_CACHE``); one that is not there is a config error at load
(:func:`source_error`), not a failure hours later in a job.

Hashing tens of GB at every Snakefile parse is too slow, so :func:`cached_sha256` keeps each
file's digest in a cache entry keyed by the file's identity and status: device, inode, size,
modification time and *change* time (ns). Restoring an old mtime (``touch -d``, ``cp -p``) moves
the change time, which no user can set, so an edited file is always hashed again. The cache lives
in ``$CAOPD_CACHE_DIR`` (default ``~/.cache/caopd``), one small JSON file per hashed file, written
atomically; it never enters a key. Parse-time imports: only the standard library (and
``huggingface_hub`` when a hub id is checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.hashing import first_difference, sha256_file

__all__ = [
    "SourceError",
    "cache_dir",
    "cached_sha256",
    "cached_snapshot",
    "dataset_fingerprint",
    "directory_digests",
    "looks_like_hub_id",
    "model_fingerprint",
    "source_error",
    "verify_digests",
]

# The hub's repo id grammar: an optional namespace and a name of letters, digits, "-", "_", ".".
_HUB_ID_RE = re.compile(r"(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}")


class SourceError(RuntimeError):
    """A local source (model directory, data file) differs from what was recorded (names it)."""


def looks_like_hub_id(text: str) -> bool:
    """True when ``text`` has the shape of a hub repo id (``name`` or ``namespace/name``)."""
    return bool(_HUB_ID_RE.fullmatch(text)) and not text.startswith((".", "-")) and ".." not in text


def cached_snapshot(repo_id: str, revision: str | None = None, repo_type: str = "model") -> Path | None:
    """The directory of ``repo_id`` at ``revision`` in the local Hugging Face cache, or None.

    Never touches the network (``snapshot_download(local_files_only=True)``).
    """
    if not looks_like_hub_id(repo_id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, repo_type=repo_type, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError; HFValidationError a ValueError
        return None


def source_error(path: str, *, kind: str, revision: str | None = None) -> str | None:
    """Why ``path`` cannot be read as a ``kind`` ("model" or "dataset") source, or None if it can.

    A model is a local directory holding ``config.json`` or a model in the local hub cache; a
    dataset is an existing local file or directory or a dataset in the local hub cache.
    """
    local = Path(path)
    if local.exists():
        if kind == "model" and not (local / "config.json").is_file():
            return f"{path!r} exists but is not a model directory (no config.json in it)"
        return None
    where = f"the local Hugging Face cache ({_hub_cache()})"
    if not looks_like_hub_id(path):
        return f"{path!r} does not exist (resolved from {os.getcwd()})"
    if cached_snapshot(path, revision, repo_type=kind) is None:
        what = f"{kind} {path!r}" + (f" at revision {revision!r}" if revision else "")
        return (
            f"{path!r} is not a local path (resolved from {os.getcwd()}) and the {what} is not in "
            f"{where}; nothing is downloaded at run time: fetch it first "
            f"(huggingface-cli download{' --repo-type dataset' if kind == 'dataset' else ''} {path}) "
            "or give a local path"
        )
    return None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cache_dir() -> Path:
    """Where :func:`cached_sha256` keeps its entries (``$CAOPD_CACHE_DIR``, else ``~/.cache/caopd``)."""
    configured = os.environ.get("CAOPD_CACHE_DIR")
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "caopd"
    return base / "sha256"


def cached_sha256(path: str | Path) -> str:
    """The sha256 of the file at ``path``, from the cache when the file's status is unchanged.

    The entry is keyed by the resolved path and validated against device, inode, size, mtime and
    ctime in ns (module docstring); any difference rehashes. A cache that cannot be written is
    not an error (the digest is just computed again next time).
    """
    real = Path(path).resolve()
    st = real.stat()
    status = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    entry = cache_dir() / (hashlib.sha256(str(real).encode()).hexdigest() + ".json")
    try:
        recorded = json.loads(entry.read_text(encoding="utf-8"))
        if recorded.get("status") == status and recorded.get("path") == str(real):
            return str(recorded["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(real)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"path": str(real), "status": status, "sha256": digest}), encoding="utf-8")
        os.replace(tmp, entry)
    except OSError:
        pass
    return digest


def directory_digests(directory: str | Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``directory`` (hidden files and
    directories skipped, symlinks to files followed), hashed through :func:`cached_sha256`."""
    directory = Path(directory)
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        out[rel.as_posix()] = cached_sha256(path)
    return out


def verify_digests(directory: str | Path, recorded: Mapping[str, Any], what: str) -> None:
    """Check the files of ``directory`` against ``recorded`` (``{relative path: sha256}``).

    Raises:
        SourceError: naming the first file that is missing, altered or new, and ``what``
            recorded the digests (e.g. ``"results/base_model/<key>/model_ref.json"``).
    """
    directory = Path(directory)
    found = directory_digests(directory)
    difference = first_difference(found, recorded)
    if difference is None:
        return
    kind, rel = difference
    if kind == "missing":
        raise SourceError(f"{directory / rel}: recorded in {what} but missing")
    if kind == "changed":
        raise SourceError(
            f"{directory / rel}: sha256 {found[rel][:12]}… differs from the {recorded[rel][:12]}… recorded "
            f"in {what}; the file changed after it was recorded"
        )
    raise SourceError(f"{directory / rel}: not recorded in {what}; the directory changed after it was recorded")


def dataset_fingerprint(path: str) -> dict[str, Any]:
    """What of a raw data source enters the data key: file hashes of a local path, else the id."""
    p = Path(path)
    if p.is_file():
        return {"path": path, "files": {p.name: sha256_file(p)}}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return {"path": path, "files": {f.relative_to(p).as_posix(): sha256_file(f) for f in files}}
    return {"hub_id": path}


def model_fingerprint(source: str, revision: str | None) -> dict[str, Any]:
    """What of a non-tiny starting model enters the base-model key.

    A local directory is described by the sha256 of every file (:func:`directory_digests`,
    cached by file status so that a parse does not rehash unchanged weights; size and mtime alone
    let same-size weights with an old mtime keep the key). A hub id is described by the id, the
    pinned revision and the commit of the snapshot in the local cache, so a newer snapshot
    fetched under the same id gives a new key.
    """
    p = Path(source)
    if p.exists():
        return {"path": str(p), "files": directory_digests(p)}
    snapshot = cached_snapshot(source, revision)
    return {"hub_id": source, "revision": revision, "commit": None if snapshot is None else snapshot.name}
