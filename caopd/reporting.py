"""Figures and tables: per variant (stage plots) and across variants (rule compare).

Per variant: reliability diagram, confidence histogram split by correct/wrong, P_acc histogram
per round, training curves. Across variants: the metrics table, accuracy vs mean confidence with
the diagonal (the paper's Figure 1 view) and accuracy vs ECE, each variant with its 95% CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.artifacts import CURVES_FILE, read_metrics_file, read_scored

TABLE_METRICS = (
    "n", "accuracy", "mean_confidence", "overconfidence_gap", "ece", "brier", "spr", "auroc",
    "format_adherence", "answer_parse_rate",
)
#: from the ``expected_confidence`` block (greedy runs), as ``expected_<name>`` columns
EXPECTED_METRICS = ("mean_confidence", "overconfidence_gap", "ece")


def _read_curves(distill_dir: Path):
    import pandas as pd

    if (distill_dir / CURVES_FILE).is_file():
        return pd.read_parquet(distill_dir / CURVES_FILE)
    if (distill_dir / "curves.jsonl").is_file():
        return pd.read_json(distill_dir / "curves.jsonl", lines=True)
    return None


def variant_figures(inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Write the per-variant PNGs into ``out``; ``inputs`` has ``evaluate``, ``targets_<r>``,
    ``distill_<r>`` artifact directories."""
    import pandas as pd

    from caopd.evaluation.plots import (
        confidence_histogram, new_figure, pacc_histogram, reliability_diagram, save_figure, training_curves,
    )

    out = Path(out)
    metrics = read_metrics_file(inputs["evaluate"])
    scored = read_scored(inputs["evaluate"])
    written = []
    fig, ax = new_figure()
    reliability_diagram(ax, metrics["bins"])
    ax.set_title(f"Reliability (ECE {metrics['ece']:.3f})")
    written.append(save_figure(fig, out / "reliability.png"))
    fig, ax = new_figure()
    confidence_histogram(ax, scored["correct"].to_numpy(), scored["confidence"].to_numpy())
    written.append(save_figure(fig, out / "confidence_histogram.png"))

    from caopd.index import training_targets

    p_acc = {}
    for role, path in sorted(inputs.items()):
        if role.startswith(("targets_", "distill_")):
            frame = training_targets(Path(path))
            if frame is not None:
                p_acc[int(role.split("_")[-1])] = frame["p_acc"].tolist()
    if p_acc:
        fig, ax = new_figure()
        pacc_histogram(ax, p_acc)
        written.append(save_figure(fig, out / "pacc_histogram.png"))

    curves = [
        c for role, path in sorted(inputs.items(), key=lambda kv: kv[0])
        if role.startswith("distill_") and (c := _read_curves(Path(path))) is not None
    ]
    if curves:
        frame = pd.concat(curves, ignore_index=True).sort_values("step")
        from caopd.evaluation.plots import CURVE_COLUMNS

        n = sum(col in frame.columns for col in CURVE_COLUMNS)
        fig, axes = new_figure(1, max(1, n), figsize=(3.2 * max(1, n), 3))
        training_curves(axes if n > 1 else [axes], frame)
        written.append(save_figure(fig, out / "training_curves.png"))
    return {"figures": sorted(p.name for p in written)}


def metrics_table(evaluations: Mapping[str, str | Path]):
    """One row per variant: the headline metrics and their 95% intervals, and where the run has
    them the same for the expected stated confidence (``expected_*``, empty otherwise)."""
    import pandas as pd

    rows = []
    for variant, path in evaluations.items():
        metrics = read_metrics_file(path)
        row: dict[str, Any] = {"variant": variant}
        for name in TABLE_METRICS:
            row[name] = metrics.get(name)
            ci = (metrics.get("ci95") or {}).get(name)
            if ci:
                row[f"{name}_lo"], row[f"{name}_hi"] = ci
        expected = metrics.get("expected_confidence") or {}
        for name in EXPECTED_METRICS:
            row[f"expected_{name}"] = expected.get(name) if expected.get("n") else None
            ci = (expected.get("ci95") or {}).get(name)
            if ci and expected.get("n"):
                row[f"expected_{name}_lo"], row[f"expected_{name}_hi"] = ci
        rows.append(row)
    return pd.DataFrame(rows)


def compare_variants(evaluations: Mapping[str, str | Path], *, table: Path, confidence: Path, ece: Path) -> None:
    """The across-variant table and the two scatter figures; the confidence figure also shows
    each greedy variant read by its expected stated confidence (``<variant> (expected)``)."""
    from caopd.evaluation.plots import accuracy_vs_confidence, accuracy_vs_ece, new_figure, save_figure
    from caopd.store import write_text

    frame = metrics_table(evaluations)
    write_text(table, frame.to_csv(sep="\t", index=False, float_format="%.4f"))
    points, expected_points = [], []
    for variant, path in evaluations.items():
        metrics = read_metrics_file(path)
        points.append({"variant": variant, **{k: metrics[k] for k in ("accuracy", "mean_confidence", "ece")},
                       "ci95": metrics.get("ci95") or {}})
        expected = metrics.get("expected_confidence") or {}
        if expected.get("n"):
            expected_points.append({"variant": f"{variant} (expected)", "ci95": expected.get("ci95") or {},
                                    "hollow": True,
                                    **{k: expected[k] for k in ("accuracy", "mean_confidence", "ece")}})
    # room for the legend beside the square axes, one line per point (26 for a 13-variant grid)
    fig, ax = new_figure(figsize=(6.5, max(4.0, 0.8 + 0.15 * len(points + expected_points))))
    accuracy_vs_confidence(ax, points + expected_points)
    save_figure(fig, confidence)
    fig, ax = new_figure(figsize=(6.5, 4.0))  # the legend beside the axes, as above
    accuracy_vs_ece(ax, points)
    save_figure(fig, ece)


def run(job: Any) -> dict[str, Any]:
    """Stage ``plots`` (the stage contract, :func:`caopd.job.run_stage`)."""
    return variant_figures(job.inputs, job.out)
