"""`python -m nekrs_ml.cli` is the `nekrs-ml` command (the launcher starts its parts this way)."""

from nekrs_ml.cli import entry

entry()
