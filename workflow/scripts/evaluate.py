"""Rule evaluate: metrics.json of a model's eval answers (caopd.evaluation.stage.run_evaluate)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.artifacts import METRICS_FILE
from caopd.evaluation.stage import run_evaluate
from caopd.job import stage_job

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(run_evaluate(job.params, job.inputs, job.out, seed=job.seed))
    job.log_metrics({k: v for k, v in job.result.items() if isinstance(v, float)})
    job.log_artifact(job.out / METRICS_FILE)
