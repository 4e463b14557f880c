"""`python -m nekrs_ml` is the `nekrs-ml` command."""

import sys

from nekrs_ml.cli import main

sys.exit(main())
