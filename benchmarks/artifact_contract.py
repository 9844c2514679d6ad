"""Behaviour contract of a restructuring (issue 14): two runs of the same config, before and after
a code change, publish the same files.

Artifacts are matched across the runs by what does not depend on the code: stage, round and seed
(the seed comes from the draw key, which leaves the code out; caopd.plan). For each pair every
file's sha256 in the manifests must be equal, except ``spec.json`` (it holds the code
fingerprint) and ``tracking.json`` (it holds the keys), which are compared with the keys and
code taken out. Works on a finished run or on one still running (published artifacts only).

  python benchmarks/artifact_contract.py save RUN_DIR OUT.json
  python benchmarks/artifact_contract.py compare BEFORE.json AFTER.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

KEYED = ("spec.json", "tracking.json")


def _without_keys(path: Path) -> str:
    """sha256 of a spec or tracking record with keys, code and run ids taken out."""
    body = json.loads(path.read_text())
    if path.name == "spec.json":
        body = {"stage": body["stage"], "params": body["params"], "upstream": sorted(body["upstream"])}
    else:
        drop = ("caopd.key", "caopd.upstream", "caopd.code", "caopd.git")
        body = {k: v for k, v in body.items() if k not in ("run_id", "started", "ended", "seconds")}
        body["tags"] = {k: v for k, v in body.get("tags", {}).items() if not k.startswith(drop)}
        body["metrics"] = [m for m in body.get("metrics", []) if "second" not in m["name"]]  # no timings
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(run: str, out: str) -> None:
    rows = {}
    for manifest_path in sorted(Path(run, "results").glob("*/*/manifest.json")):
        directory = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        name = f"{manifest['stage']}/{manifest['round']}/{manifest['seed']}"
        files = {rel: e["sha256"] for rel, e in manifest["files"].items() if rel not in KEYED}
        files.update({rel: _without_keys(directory / rel) for rel in KEYED if (directory / rel).is_file()})
        rows[name] = {"key": manifest["key"], "files": files}
    Path(out).write_text(json.dumps(rows, indent=1, sort_keys=True))
    print(f"{run}: {len(rows)} artifacts, {sum(len(r['files']) for r in rows.values())} files")


def compare(before: str, after: str) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (before, after))
    common = sorted(set(a) & set(b))
    problems = []
    for name in common:
        x, y = a[name]["files"], b[name]["files"]
        if set(x) != set(y):
            problems.append(f"{name}: file sets differ {sorted(set(x) ^ set(y))}")
        problems += [f"{name}: {rel} differs" for rel in sorted(set(x) & set(y)) if x[rel] != y[rel]]
    files = sum(len(a[n]["files"]) for n in common)
    moved = sum(a[n]["key"] != b[n]["key"] for n in common)
    print(f"{len(common)} artifacts in both runs ({files} files), keys moved: {moved}; "
          f"only before: {sorted(set(a) - set(b))}; only after: {sorted(set(b) - set(a))}")
    for line in problems:
        print("DIFF", line)
    print("ALL EQUAL" if not problems else "NOT EQUAL")
    return 1 if problems else 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit(save(*args) if command == "save" else compare(*args))
