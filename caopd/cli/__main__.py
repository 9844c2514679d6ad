"""``python -m caopd.cli``: the ``caopd`` command line without the entry point."""

import sys

from caopd.cli import main

sys.exit(main())
