"""CaOPD: calibration-aware on-policy distillation.

The package behind the Snakemake workflow at the repository root. Importing ``caopd`` is cheap
(no torch, no mlflow): the Snakefile imports :mod:`caopd.config` and :mod:`caopd.plan` at parse
time, and the heavy modules are imported only by the jobs that need them.
"""

__version__ = "0.1.0"
