"""Rule prepare_data: write a task's train / val / eval splits (caopd.data.prepare_data)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.data import prepare_data
from caopd.job import stage_job

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(prepare_data(job.params, job.out))
