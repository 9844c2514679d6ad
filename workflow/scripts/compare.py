"""Rule compare: the across-variant metrics table and figures (caopd.reporting.compare_variants)
and the paper's five checks (caopd.checks.write_checks). Every evaluate artifact is verified
against its manifest first (a hand-edited metrics.json is an error naming the file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.checks import write_checks
from caopd.job import setup_logging
from caopd.reporting import compare_variants
from caopd.store import verify_artifact

setup_logging(snakemake.log[0])  # noqa: F821
evaluations = {name: snakemake.input[name] for name in snakemake.input.keys()}  # noqa: F821
for path in evaluations.values():
    verify_artifact(path)
compare_variants(
    evaluations,
    table=snakemake.output.table,  # noqa: F821
    confidence=snakemake.output.confidence,  # noqa: F821
    ece=snakemake.output.ece,  # noqa: F821
)
write_checks(evaluations, snakemake.output.checks)  # noqa: F821
