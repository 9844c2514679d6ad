"""Rule compare: the across-variant metrics table and figures (caopd.reporting.compare_variants)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import setup_logging
from caopd.reporting import compare_variants

setup_logging(snakemake.log[0])  # noqa: F821
compare_variants(
    {name: snakemake.input[name] for name in snakemake.input.keys()},  # noqa: F821
    table=snakemake.output.table,  # noqa: F821
    confidence=snakemake.output.confidence,  # noqa: F821
    ece=snakemake.output.ece,  # noqa: F821
)
