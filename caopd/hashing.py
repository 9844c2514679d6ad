"""The hashing primitives every key, manifest and checkpoint is made of (DESIGN §4).

- :func:`canonical_json`: the byte string a key is hashed from (sorted keys, no whitespace);
- :func:`digest`: the first :data:`KEY_LENGTH` hex digits of its sha256, an artifact's key;
- :func:`sha256_file`: a file's sha256, for manifests, sealed checkpoints and data sources;
- :func:`code_fingerprint`: the digest of the source files a stage runs;
- :func:`first_difference`: where a directory's file table differs from a recorded one (the
  one comparison behind :func:`caopd.sources.verify_digests` and :func:`caopd.store.verify_sealed`).

Standard library only: the Snakefile imports this module (through :mod:`caopd.plan`) at parse
time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Hex digits of an artifact key (64 bits).
KEY_LENGTH = 16


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the byte string keys are hashed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def digest(obj: Any) -> str:
    """``sha256(canonical_json(obj))[:KEY_LENGTH]``: the key of a preimage."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:KEY_LENGTH]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of the file at ``path`` (hex), read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_fingerprint(entries: Sequence[str], root: str | Path) -> str:
    """sha256 over (relative path, sha256 of content) of every ``*.py`` file the entries name.

    A directory entry covers its ``*.py`` files recursively; an entry that does not exist
    contributes a ``missing`` marker (so creating it later changes the fingerprint).
    """
    root = Path(root)
    items: list[tuple[str, str]] = []
    for entry in entries:
        path = root / entry
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
            items.extend((p.relative_to(root).as_posix(), sha256_file(p)) for p in files)
        elif path.is_file():
            items.append((entry, sha256_file(path)))
        else:
            items.append((entry, "missing"))
    return digest(items)


def first_difference(found: Mapping[str, Any], recorded: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first way a directory's file table differs from the one recorded when it was written.

    Args:
        found: ``{relative posix path: entry}`` of the files there now; an entry is anything
            compared with ``==`` (a sha256, or ``{"sha256", "size"}``).
        recorded: the same table as recorded.

    Returns:
        ``None`` when the tables are equal; else ``(kind, relative path)``, the recorded paths
        checked in sorted order first: ``"missing"`` (recorded, not found), ``"changed"`` (its
        entry differs), then ``"unrecorded"`` (the first found path, sorted, that was not recorded).
    """
    for rel in sorted(recorded):
        if rel not in found:
            return "missing", rel
        if found[rel] != recorded[rel]:
            return "changed", rel
    extra = sorted(set(found) - set(recorded))
    return ("unrecorded", extra[0]) if extra else None
