"""Create the MLflow store once, before parallel jobs use it (DESIGN §9). Rule: tracking_store."""

import sys

sys.path.insert(0, snakemake.params.root)  # noqa: F821

from caopd.job import setup_logging
from caopd.store import write_json
from caopd.tracking import ensure_store

setup_logging(snakemake.log[0])  # noqa: F821
tracking = snakemake.params.tracking  # noqa: F821
experiment_id = ensure_store(tracking["uri"], tracking["experiment"])
write_json(snakemake.output[0], {**tracking, "experiment_id": experiment_id})  # noqa: F821
