"""The paper's finding as five checks on the evaluations of the ``base``, ``sdft`` and ``caopd`` runs.

On-policy self-distillation makes the student overconfident, CaOPD makes it calibrated and its
confidence informative, and accuracy does not suffer. The thresholds live in one place,
:data:`THRESHOLDS` (:class:`Thresholds`); the three roles in one, :data:`ROLES`:

=====================  ===================================================================
check                  holds when
=====================  ===================================================================
sdft_overconfident     gap(sdft) >= +0.15 and the lower end of its 95% interval > 0
caopd_calibrated       |gap(caopd)| <= 0.05
ece_halved             ECE(caopd) <= 0.5 * ECE(sdft)
confidence_informative SPR(caopd) >= SPR(sdft) + 0.2
capability_kept        paired non-inferiority: the 95% interval of the paired accuracy
                       difference caopd - sdft, and of caopd - base, lies above -0.03
=====================  ===================================================================

``gap`` is the overconfidence gap (mean confidence - accuracy) of the decoded (stated) numbers:
the checks never use anything else. Where a greedy run also has the expected stated confidence
(:mod:`caopd.rollouts.expected_confidence`), the ``caopd_calibrated`` line adds its gap for
reading, without changing the verdict.

The capability check compares the variants on the SAME questions (every run is evaluated on
the same eval split, ``task.arith.eval_seed``): :func:`paired_accuracy` resamples questions once
for both variants (:func:`caopd.evaluation.bootstrap.paired_difference`), so the interval is
that of the difference, not of two noisy numbers; a larger eval split narrows it.

Where they are read:

- the ``compare`` rule writes them to ``results/compare/checks.txt`` (:func:`write_checks`) when
  the run has variants named ``base``, ``sdft`` and ``caopd``;
- ``caopd checks`` prints them for a finished run, read through its ``results/index/`` (exit
  status 0 when all five hold)::

      caopd checks results/index
      caopd checks results/index --sdft sdft_lr3e4 --caopd caopd_lr3e4

  (the second form checks other variants in the three roles, e.g. a sweep of config/tuning.yaml);
- the seed study counts them over seeds (:mod:`caopd.diagnostics.seed_study`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caopd.artifacts import read_metrics_file, read_scored
from caopd.store import write_text

#: The variants the checks read, by role; a run's variants of these names play them unless told
#: otherwise (``caopd checks --sdft NAME``).
ROLES = ("base", "sdft", "caopd")
#: The variants caopd's paired accuracy is compared against (``capability_kept``).
PAIRED_AGAINST = ("sdft", "base")
CHECKS = ("sdft_overconfident", "caopd_calibrated", "ece_halved", "confidence_informative",
          "capability_kept")


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the five checks (module docstring), defined once.

    The finding they encode is the paper's (arXiv 2604.16830; ../shared/PAPER.md "Results to
    compare against": SDFT states tens of points above its accuracy, CaOPD about its accuracy,
    ECE falls by about half, SPR rises by 0.2-0.5); the paired capability margin is issue 12's
    (item 2: the 95% interval of the paired accuracy difference above -0.03). Dimensionless,
    on the scale of the metrics they bound (:mod:`caopd.evaluation.metrics`).
    """

    #: sdft_overconfident: gap(sdft) at least this
    sdft_min_gap: float = 0.15
    #: caopd_calibrated: |gap(caopd)| at most this
    calibrated_max_gap: float = 0.05
    #: ece_halved: ECE(caopd) at most this times ECE(sdft)
    ece_max_ratio: float = 0.5
    #: confidence_informative: SPR(caopd) - SPR(sdft) at least this
    spr_min_gain: float = 0.2
    #: capability_kept: the paired 95% interval's low end above -margin
    accuracy_margin: float = 0.03


THRESHOLDS = Thresholds()
#: slack on every threshold, so that float rounding of an exact boundary value still passes
TOLERANCE = 1e-9
#: bootstrap of the paired accuracy differences (fixed: the verdict is a function of the answers)
PAIRED_RESAMPLES = 2000
PAIRED_SEED = 0


class ChecksUndefined(ValueError):
    """The checks cannot be computed on these evaluations (says why): they answer other questions,
    or ran without the bootstrap the interval checks read."""


@dataclass(frozen=True)
class Check:
    """One check's verdict: its name (one of :data:`CHECKS`), whether it holds, its figures."""

    name: str
    passed: bool
    detail: str


def paired_accuracy(a: Any, b: Any, *, n_resamples: int = PAIRED_RESAMPLES,
                    seed: int = PAIRED_SEED) -> dict[str, float]:
    """Accuracy of ``a`` minus that of ``b`` on the same questions, with its paired 95% interval.

    Args:
        a, b: scored answers (``scored.parquet`` of the evaluate stage: ``prompt_id``,
            ``sample_index``, ``correct``); the same (question, sample) rows in both, any order.
            With several samples per question the questions are resampled whole.
        n_resamples, seed: the bootstrap (:func:`caopd.evaluation.bootstrap.paired_difference`).

    Returns:
        ``{"diff", "lo", "hi"}``.

    Raises:
        ChecksUndefined: the two evaluations do not answer the same (question, sample) rows.
    """
    import numpy as np
    import pandas as pd

    from caopd.evaluation.bootstrap import paired_difference
    from caopd.evaluation.metrics import accuracy

    keys = ["prompt_id", "sample_index"]
    left, right = (frame.sort_values(keys).reset_index(drop=True) for frame in (a, b))
    if not left[keys].equals(right[keys]):
        raise ChecksUndefined(
            f"paired accuracy needs the same (prompt_id, sample_index) rows in both evaluations: "
            f"{len(left)} rows against {len(right)}, or other questions"
        )
    zeros = np.zeros(len(left))
    groups = pd.factorize(left["prompt_id"])[0]
    return paired_difference(
        left["correct"].to_numpy(dtype=float), zeros, right["correct"].to_numpy(dtype=float), zeros,
        lambda correct, _confidence: accuracy(correct, _confidence),
        n_resamples=n_resamples, seed=seed, groups=groups,
    )


def paper_checks(metrics: Mapping[str, Mapping[str, Any]],
                 paired: Mapping[str, Mapping[str, float]]) -> list[Check]:
    """The five checks (module docstring).

    Args:
        metrics: ``metrics[role]``, the ``metrics.json`` body of ``base``, ``sdft`` and ``caopd``
            (:func:`caopd.evaluation.summary.summarize`: point values at the top level, ``ci95``
            intervals as ``[low, high]``).
        paired: :func:`paired_accuracy` of caopd against ``"sdft"`` and against ``"base"``.

    Raises:
        KeyError: naming the variant or comparison that is missing.
        ChecksUndefined: sdft's evaluation has no 95% interval of its gap (``evaluation.bootstrap: 0``).
    """
    for role in ROLES:
        if role not in metrics:
            raise KeyError(f"paper checks need the metrics of variant {role!r}; got {sorted(metrics)}")
    for other in PAIRED_AGAINST:
        if other not in paired:
            raise KeyError(f"paper checks need the paired accuracy of caopd against {other!r}")
    t, eps = THRESHOLDS, TOLERANCE
    sdft, caopd = metrics["sdft"], metrics["caopd"]
    sdft_interval = (sdft.get("ci95") or {}).get("overconfidence_gap")
    if sdft_interval is None:
        raise ChecksUndefined("sdft_overconfident reads the 95% interval of sdft's overconfidence gap; "
                              "its evaluation has none (evaluation.bootstrap: 0)")
    sdft_gap, sdft_low = sdft["overconfidence_gap"], sdft_interval[0]
    caopd_gap = caopd["overconfidence_gap"]
    margin = t.accuracy_margin
    vs_sdft, vs_base = paired["sdft"], paired["base"]
    return [
        Check("sdft_overconfident", sdft_gap >= t.sdft_min_gap - eps and sdft_low > 0,
              f"gap(sdft) {sdft_gap:+.3f}, 95% CI low {sdft_low:+.3f} "
              f"(need >= +{t.sdft_min_gap:.2f}, > 0)"),
        Check("caopd_calibrated", abs(caopd_gap) <= t.calibrated_max_gap + eps,
              f"gap(caopd) {caopd_gap:+.3f} (need |gap| <= {t.calibrated_max_gap:.2f})"
              f"{_expected_note(caopd)}"),
        Check("ece_halved", caopd["ece"] <= t.ece_max_ratio * sdft["ece"] + eps,
              f"ECE caopd {caopd['ece']:.3f} vs sdft {sdft['ece']:.3f} "
              f"(need <= {t.ece_max_ratio:g} x)"),
        Check("confidence_informative", caopd["spr"] >= sdft["spr"] + t.spr_min_gain - eps,
              f"SPR caopd {caopd['spr']:.3f} vs sdft {sdft['spr']:.3f} (need >= +{t.spr_min_gain:.1f})"),
        Check("capability_kept", vs_sdft["lo"] > -margin - eps and vs_base["lo"] > -margin - eps,
              f"accuracy caopd {caopd['accuracy']:.3f}; paired caopd - sdft {vs_sdft['diff']:+.3f} "
              f"[{vs_sdft['lo']:+.3f}, {vs_sdft['hi']:+.3f}], caopd - base {vs_base['diff']:+.3f} "
              f"[{vs_base['lo']:+.3f}, {vs_base['hi']:+.3f}] (need 95% CI low > -{margin:.2f})"),
    ]


def _expected_note(metrics: Mapping[str, Any]) -> str:
    block = metrics.get("expected_confidence") or {}
    if not block.get("n"):
        return ""
    low, high = (block.get("ci95") or {}).get("overconfidence_gap") or (None, None)
    interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
    return f"; expected stated confidence: gap {block['overconfidence_gap']:+.3f}{interval}, not checked"


def evaluations_from_index(index_dir: Path, root: Path | None = None,
                           names: Mapping[str, str] | None = None) -> dict[str, Path]:
    """``{role: evaluate artifact directory}`` for the roles of :data:`ROLES`.

    ``names`` maps a role to the variant that plays it (default: the variant of the same name).
    ``root`` is the directory the index's paths are relative to (default: the parent of
    ``index_dir``'s parent, i.e. the workflow's working directory).
    """
    from caopd.index import read_index

    root = index_dir.parent.parent if root is None else root
    out = {}
    for role in ROLES:
        variant = (names or {}).get(role, role)
        index = read_index(index_dir, variant, root)  # verifies the evaluate artifact
        if not index.get("metrics"):
            raise FileNotFoundError(f"{index_dir / f'{variant}.json'}: variant {variant!r} has no metrics yet")
        out[role] = (root / index["metrics"]).parent
    return out


def metrics_from_index(index_dir: Path, root: Path | None = None,
                       names: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``{role: metrics.json body}`` of :func:`evaluations_from_index`."""
    return {role: read_metrics_file(path)
            for role, path in evaluations_from_index(index_dir, root, names).items()}


def checks_from_evaluations(evaluations: Mapping[str, str | Path]) -> tuple[dict[str, dict[str, Any]],
                                                                           dict[str, dict[str, float]],
                                                                           list[Check]]:
    """``(metrics, paired, checks)`` of the evaluate artifacts ``{role: directory}`` of :data:`ROLES`."""
    metrics = {role: read_metrics_file(evaluations[role]) for role in ROLES}
    scored = {role: read_scored(evaluations[role]) for role in ROLES}
    paired = {other: paired_accuracy(scored["caopd"], scored[other]) for other in PAIRED_AGAINST}
    return metrics, paired, paper_checks(metrics, paired)


def checks_from_index(index_dir: Path, root: Path | None = None,
                      names: Mapping[str, str] | None = None) -> tuple[dict[str, dict[str, Any]],
                                                                       dict[str, dict[str, float]],
                                                                       list[Check]]:
    """``(metrics, paired, checks)`` of a finished run, read through its index."""
    return checks_from_evaluations(evaluations_from_index(index_dir, root, names))


def format_checks(checks: Sequence[Check]) -> str:
    """One line per check, ``PASS``/``FAIL``, its name and its figures (README "Results")."""
    return "".join(f"{'PASS' if c.passed else 'FAIL'}  {c.name:<24} {c.detail}\n" for c in checks)


def write_checks(evaluations: Mapping[str, str | Path], path: str | Path) -> list[Check] | None:
    """Write the checks of a run's evaluations (``{variant: evaluate artifact directory}``) to
    ``path`` (the ``compare`` rule's ``results/compare/checks.txt``); return them.

    The variants named as :data:`ROLES` play them. A run the checks do not apply to gets one
    ``not checked:`` line saying why instead, and ``None`` is returned: it lacks one of the three
    variants (a config of other variants), or :class:`ChecksUndefined` (variants evaluated on
    other questions, an evaluation without the bootstrap).
    """
    path = Path(path)
    missing = [role for role in ROLES if role not in evaluations]
    checks = None
    if missing:
        text = (f"not checked: the paper's checks read the variants {', '.join(ROLES)}; "
                f"this run has no {', '.join(missing)}\n")
    else:
        try:
            checks = checks_from_evaluations(evaluations)[2]
            text = format_checks(checks)
        except ChecksUndefined as err:
            text = f"not checked: {err}\n"
    write_text(path, text)
    return checks
