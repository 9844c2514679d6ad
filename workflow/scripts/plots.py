"""Rule plots: the per-variant figures (caopd.reporting.variant_figures)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import stage_job
from caopd.reporting import variant_figures

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(variant_figures(job.inputs, job.out))
