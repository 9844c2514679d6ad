"""Rule targets: verify every rollout, P_acc per prompt (caopd.targets.run_targets)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.targets import run_targets

with stage_job(snakemake) as job:  # noqa: F821
    summary = run_targets(job.inputs["data"], job.inputs["rollouts"], job.out, job.params["task"])
    job.result.update(summary)
    job.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
