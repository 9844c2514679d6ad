"""Rule plots: the per-variant figures (caopd.reporting.variant_figures)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.reporting import variant_figures

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(variant_figures(job.inputs, job.out))
