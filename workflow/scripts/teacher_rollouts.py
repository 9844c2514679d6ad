"""Rule teacher_rollouts: K samples per prompt of round r's slice from the teacher prompt
(rollouts.prefix_source: teacher; caopd.rollouts.teacher.run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import run_stage
from caopd.rollouts.teacher import run

run_stage(snakemake, run)  # noqa: F821
