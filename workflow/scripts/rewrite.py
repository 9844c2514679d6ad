"""Rule rewrite: token-level training examples, CaOPD or SDFT, on the teacher's samples (input
``prefixes``) when rollouts.prefix_source is teacher (caopd.rewrite.run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import run_stage
from caopd.rewrite import run

run_stage(snakemake, run)  # noqa: F821
