"""Rule rewrite: token-level training examples, CaOPD or SDFT (caopd.rewrite.run_rewrite); on the
teacher's samples (input ``prefixes``) when rollouts.prefix_source is teacher."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

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
            prefixes_dir=job.inputs.get("prefixes"),
            task=job.params["task"],
        )
    )
