"""Rule prepare_data: the task's train/val/eval splits (caopd.data.run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import run_stage
from caopd.data import run

run_stage(snakemake, run)  # noqa: F821
