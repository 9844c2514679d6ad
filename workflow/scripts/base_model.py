"""Rule base_model: build the base model (tiny: tokenizer, warm-up; else the hub model pinned) (caopd.models.base.run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.job import run_stage
from caopd.models.base import run

run_stage(snakemake, run)  # noqa: F821
