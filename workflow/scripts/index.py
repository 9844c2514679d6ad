"""Rule index: results/index/<variant>.json (stage -> round, key, path, MLflow run) and the
variant's parent MLflow run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821 - the checkout

from caopd.index import write_index
from caopd.job import setup_logging
from caopd.tracking import tracking_settings

setup_logging(snakemake.log[0])  # noqa: F821
write_index(
    variant=snakemake.wildcards.variant,  # noqa: F821
    stages=snakemake.params.stages,  # noqa: F821
    out=snakemake.output[0],  # noqa: F821
    tracking=tracking_settings(snakemake.config),  # noqa: F821 - read at run time, not a param
)
