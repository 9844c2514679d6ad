"""Rule index: results/index/<variant>.json (stage -> round, key, path, MLflow run) and the
variant's parent MLflow run."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.index import write_index
from caopd.job import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
write_index(
    variant=snakemake.wildcards.variant,  # noqa: F821
    stages=snakemake.params.stages,  # noqa: F821
    out=snakemake.output[0],  # noqa: F821
    tracking=snakemake.params.tracking,  # noqa: F821
)
