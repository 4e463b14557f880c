"""`python -m nekrs_ml.cli` is the `nekrs-ml` command (the launcher starts its parts this way)."""

import sys

from nekrs_ml.cli import main

sys.exit(main())
