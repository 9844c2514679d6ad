"""The whole pipeline at several seeds and the paper's checks across them: ``caopd seed-study``
(caopd.diagnostics.seed_study), runnable from a checkout without the entry point. From the
repository root, in a set-up checkout::

    .venv/bin/python benchmarks/seed_study.py --seeds 0 1 2 3 4 --out runs/seed_study
    .venv/bin/python benchmarks/seed_study.py --out runs/seed_study --aggregate-only

About 10 minutes per seed on 2 CPU cores with the default config; prints the per-seed table, the
pass count of each check and the mean effects with their 95% intervals over seeds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caopd.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["seed-study", *sys.argv[1:]]))
