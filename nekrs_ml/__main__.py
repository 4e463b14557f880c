"""`python -m nekrs_ml` is the `nekrs-ml` command."""

from nekrs_ml.cli import entry

entry()
