"""Rule base_model: resolve or build the starting model (caopd.models.base.build_base_model)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import stage_job
from caopd.models.base import build_base_model

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(build_base_model(job.params, job.out, threads=job.threads, tracker=job))
