"""Rule eval_rollouts: the final model's answers on the eval split
(caopd.rollouts.stage.evaluation_rollouts)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.rollouts.stage import evaluation_rollouts

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(evaluation_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads))
