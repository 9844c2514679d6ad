"""Rule teacher_rollouts: K samples per prompt of round r's slice from the teacher prompt
(rollouts.prefix_source: teacher; caopd.rollouts.teacher.teacher_prefix_rollouts)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.rollouts.teacher import teacher_prefix_rollouts

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(teacher_prefix_rollouts(job.params, job.inputs, job.out, seed=job.seed, threads=job.threads))
