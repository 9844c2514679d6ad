"""Rule distill: train the student on round r in distill.processes processes (one in this
process, more through `accelerate launch`). A killed job resumes from results/.work/distill/<key>/ (caopd.training.stage.run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import run_stage
from caopd.training.stage import run

run_stage(snakemake, run)  # noqa: F821
