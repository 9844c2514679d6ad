"""Rule distill: train the student on round r in distill.processes processes (one in this
process, more through `accelerate launch`; caopd.training.stage). A killed job resumes from
results/.work/distill/<key>/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job, workflow_root
from caopd.resources import accelerate_path
from caopd.training.stage import run_distill_stage

root = workflow_root(snakemake)  # noqa: F821
with stage_job(snakemake) as job:  # noqa: F821
    job.result.update(run_distill_stage(
        job,
        processes=snakemake.resources.processes,  # noqa: F821 - a resource: the layout reruns nothing
        accelerate_config=accelerate_path(snakemake.resources.accelerate_config, root),  # noqa: F821
        sharding=snakemake.resources.sharding,  # noqa: F821 - issue 15: resources, not key
        gradient_checkpointing=bool(snakemake.resources.gradient_checkpointing),  # noqa: F821
        root=root,
    ))
