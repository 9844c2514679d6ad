"""Rule distill: train the student on round r's examples against the EMA teacher
(caopd.training.distill.run_distill). A killed job resumes from results/.work/distill/<key>/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import stage_job
from caopd.models.base import model_dir
from caopd.training.distill import run_distill

with stage_job(snakemake) as job:  # noqa: F821
    previous = job.inputs["student"]
    carried = (previous / "state").is_dir()  # a distill artifact of round r-1, not the base model
    job.result.update(
        run_distill(
            job.params,
            examples_path=job.inputs["examples"] / "examples.parquet",
            student_dir=model_dir(previous),
            teacher_dir=previous / "teacher" if carried else None,
            state_dir=previous / "state" if carried else None,
            out=job.out,
            work_dir=Path("results/.work/distill") / job.key,
            seed=job.seed,
            threads=job.threads,
            tracker=job,
        )
    )
