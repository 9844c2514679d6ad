"""Rule eval_rollouts: the final model's answers on the eval split
(caopd.rollouts.stage.evaluation_rollouts)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import stage_job
from caopd.rollouts.stage import evaluation_rollouts

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(evaluation_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads))
