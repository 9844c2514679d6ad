"""The paper's finding as five checks on the metrics of the ``base``, ``sdft`` and ``caopd`` runs.

Issue 5's thresholds: on-policy self-distillation makes the student overconfident, CaOPD makes
it calibrated and its confidence informative, and accuracy does not suffer.

=====================  ===================================================================
check                  holds when
=====================  ===================================================================
sdft_overconfident     gap(sdft) >= +0.15 and the lower end of its 95% interval > 0
caopd_calibrated       |gap(caopd)| <= 0.05
ece_halved             ECE(caopd) <= 0.5 * ECE(sdft)
confidence_informative SPR(caopd) >= SPR(sdft) + 0.2
capability_kept        acc(caopd) >= acc(sdft) - 0.03 and acc(caopd) >= acc(base)
=====================  ===================================================================

``gap`` is the overconfidence gap (mean confidence - accuracy) of the decoded (stated) numbers:
the checks never use anything else. Where a greedy run also has the expected stated confidence
(:mod:`caopd.evaluation.expected_confidence`), the ``caopd_calibrated`` line adds its gap for
reading, without changing the verdict. Each metrics mapping is a
variant's ``metrics.json`` (:func:`caopd.evaluation.summary.summarize`): the point values at the
top level, the intervals under ``ci95`` as ``[low, high]``.

Print them for a finished run (its ``results/index/<variant>.json`` files name the metrics)::

    python -m caopd.evaluation.claims results/index
    python -m caopd.evaluation.claims results/index --sdft sdft_lr3e4 --caopd caopd_lr3e4

(the second form checks other variants in the three roles, e.g. a sweep of config/tuning.yaml).
Exit status 0 when all five hold.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VARIANTS = ("base", "sdft", "caopd")
#: slack on every threshold, so that float rounding of an exact boundary value still passes
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def paper_checks(metrics: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    """The five checks (module docstring) on ``metrics[variant]`` for ``base``, ``sdft``, ``caopd``.

    Raises:
        KeyError: naming the variant or metric that is missing.
    """
    for variant in VARIANTS:
        if variant not in metrics:
            raise KeyError(f"paper checks need the metrics of variant {variant!r}; got {sorted(metrics)}")
    base, sdft, caopd = (metrics[v] for v in VARIANTS)
    sdft_gap, sdft_low = sdft["overconfidence_gap"], sdft["ci95"]["overconfidence_gap"][0]
    caopd_gap = caopd["overconfidence_gap"]
    eps = TOLERANCE
    return [
        Check("sdft_overconfident", sdft_gap >= 0.15 - eps and sdft_low > 0,
              f"gap(sdft) {sdft_gap:+.3f}, 95% CI low {sdft_low:+.3f} (need >= +0.15, > 0)"),
        Check("caopd_calibrated", abs(caopd_gap) <= 0.05 + eps,
              f"gap(caopd) {caopd_gap:+.3f} (need |gap| <= 0.05){_expected_note(caopd)}"),
        Check("ece_halved", caopd["ece"] <= 0.5 * sdft["ece"] + eps,
              f"ECE caopd {caopd['ece']:.3f} vs sdft {sdft['ece']:.3f} (need <= half)"),
        Check("confidence_informative", caopd["spr"] >= sdft["spr"] + 0.2 - eps,
              f"SPR caopd {caopd['spr']:.3f} vs sdft {sdft['spr']:.3f} (need >= +0.2)"),
        Check("capability_kept",
              caopd["accuracy"] >= sdft["accuracy"] - 0.03 - eps
              and caopd["accuracy"] >= base["accuracy"] - eps,
              f"accuracy caopd {caopd['accuracy']:.3f}, sdft {sdft['accuracy']:.3f}, "
              f"base {base['accuracy']:.3f} (need >= sdft - 0.03 and >= base)"),
    ]


def _expected_note(metrics: Mapping[str, Any]) -> str:
    block = metrics.get("expected_confidence") or {}
    if not block.get("n"):
        return ""
    low, high = (block.get("ci95") or {}).get("overconfidence_gap") or (None, None)
    interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
    return f"; expected stated confidence: gap {block['overconfidence_gap']:+.3f}{interval}, not checked"


def metrics_from_index(index_dir: Path, root: Path | None = None,
                       names: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``{role: metrics}`` for the roles of :data:`VARIANTS`, read through ``index_dir``.

    ``names`` maps a role to the variant that plays it (default: the variant of the same name).
    ``root`` is the directory the index's paths are relative to (default: the parent of
    ``index_dir``'s parent, i.e. the workflow's working directory).
    """
    from caopd.index import read_index

    root = index_dir.parent.parent if root is None else root
    out = {}
    for role in VARIANTS:
        variant = (names or {}).get(role, role)
        index = read_index(index_dir, variant)
        if not index.get("metrics"):
            raise FileNotFoundError(f"{index_dir / f'{variant}.json'}: variant {variant!r} has no metrics yet")
        out[role] = json.loads((root / index["metrics"]).read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m caopd.evaluation.claims", description=__doc__.splitlines()[0])
    parser.add_argument("index_dir", nargs="?", type=Path, default=Path("results/index"))
    for role in VARIANTS:
        parser.add_argument(f"--{role}", default=role, help=f"variant in the role of {role!r}")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = {role: getattr(args, role) for role in VARIANTS}
    checks = paper_checks(metrics_from_index(args.index_dir, names=names))
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<24} {check.detail}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
