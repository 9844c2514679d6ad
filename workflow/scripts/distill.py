"""Rule distill: train the student on round r (caopd.training.distill.run_distill, or
caopd.training.online.run_online_distill when distill.schedule is online). A killed job resumes
from results/.work/distill/<key>/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.models.base import model_dir

with stage_job(snakemake) as job:  # noqa: F821
    previous = job.inputs["student"]
    carried = job.params["round"] > 1  # round r > 1 starts from the distill artifact of round r-1
    common = dict(
        student_dir=model_dir(previous),
        teacher_dir=previous / "teacher" if carried else None,
        state_dir=previous / "state" if carried else None,
        out=job.out,
        work_dir=Path("results/.work/distill") / job.key,
        seed=job.seed,
        threads=job.threads,
        tracker=job,
    )
    if job.params["distill"]["schedule"] == "online":
        from caopd.training.online import run_online_distill

        job.result.update(run_online_distill(job.params, data_dir=job.inputs["data"], **common))
    else:
        from caopd.training.distill import run_distill

        examples = job.inputs["examples"] / "examples.parquet"
        job.result.update(run_distill(job.params, examples_path=examples, **common))
