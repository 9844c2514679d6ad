"""Rule rewrite: token-level training examples, CaOPD or SDFT (caopd.rewrite.run_rewrite)."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import stage_job
from caopd.models.base import model_dir
from caopd.rewrite import run_rewrite

with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(
        run_rewrite(
            job.inputs["data"],
            job.inputs["rollouts"],
            job.inputs["targets"],
            model_dir(job.inputs["tokenizer"]),
            job.out,
            job.params["rewrite"],
        )
    )
