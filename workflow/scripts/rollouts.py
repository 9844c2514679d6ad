"""Rule rollouts: K rollouts per training prompt of round r from the round's student (caopd.rollouts.stage.run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import run_stage
from caopd.rollouts.stage import run

run_stage(snakemake, run)  # noqa: F821
