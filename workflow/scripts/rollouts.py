"""Rule rollouts: K samples per prompt of round r's slice (caopd.rollouts.stage.training_rollouts)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import stage_job
from caopd.rollouts.stage import training_rollouts

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(training_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads))
