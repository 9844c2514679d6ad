"""Rule rollouts: K samples per prompt of round r's slice (caopd.rollouts.stage.training_rollouts)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.rollouts.stage import training_rollouts

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(training_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads))
    curriculum = {k: v for k, v in job.result.items() if k.startswith("curriculum_")}  # issue 18
    if curriculum:
        job.log_metrics(curriculum, step=job.round)
