"""Rule base_model: resolve or build the starting model (caopd.models.base.build_base_model)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.models.base import build_base_model

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(build_base_model(job.params, job.out, threads=job.threads, tracker=job))
