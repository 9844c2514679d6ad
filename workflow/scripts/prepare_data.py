"""Rule prepare_data: write a task's train / val / eval splits (caopd.data.prepare_data)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.data import prepare_data
from caopd.job import stage_job

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(prepare_data(job.params, job.out))
