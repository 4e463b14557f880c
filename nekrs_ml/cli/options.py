"""Options shared by several commands."""

from __future__ import annotations

import argparse

from .. import environment


def add_namespace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", help=f"key prefix of the run (default: "
                        f"${environment.NAMESPACE}, else the case's namespace, else "
                        f"{environment.DEFAULT_NAMESPACE})")
