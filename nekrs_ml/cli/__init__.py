"""The ``nekrs-ml`` command: one module per command group in this package.

A command module defines its sub-commands with ``@command(name, help)`` (from .commands) on a
function that adds the arguments to its parser and returns the handler ``handler(args) -> exit
code``; the module is listed once in COMMAND_MODULES. Library modules hold no argparse code.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import List, Optional

from ..errors import NekrsMLError
from .commands import COMMANDS, command
from .config import package_dir, udf_build_env

# The two helpers for the launcher (NekRS case builds).
__all__ = ["COMMANDS", "COMMAND_MODULES", "build_parser", "command", "entry", "main",
           "package_dir", "udf_build_env"]

# The command modules, in the order of `nekrs-ml --help`. A module that does not exist is
# skipped, so a command group can be added here before its module lands.
COMMAND_MODULES = (
    "nekrs_ml.cli.config",
    "nekrs_ml.cli.db",
    "nekrs_ml.cli.train",
    "nekrs_ml.cli.serve",
    "nekrs_ml.cli.models",
    "nekrs_ml.cli.bench",
    "nekrs_ml.cli.reproduce",
    "nekrs_ml.cli.run",
    "nekrs_ml.cli.node",
    "nekrs_ml.cli.mesh",
    "nekrs_ml.cli.check",
)


def _load_command_modules() -> None:
    for module in COMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency inside an existing module is a bug
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="nekrs-ml",
        description="Online training and inference for NekRS through an in-memory database.")
    parser.add_argument("--version", action="version", version=f"nekrs_ml {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, build) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(handler=build(sub_parser))
    return parser


def _version() -> str:
    from .. import __version__
    return __version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NekrsMLError as exc:
        print(f"nekrs-ml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nekrs-ml {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The process's entry point (the `nekrs-ml` script, `python -m nekrs_ml[.cli]`).

    Once the command is done, Ctrl-C is ignored: a second Ctrl-C that arrives while the process
    exits (the interpreter puts back the default handler as it finalises) would otherwise kill
    it by SIGINT after the run had already stopped everything and said so, and its exit code
    (130 after an interrupted run) would be lost."""
    try:
        code = main()
    except KeyboardInterrupt:  # after main's own handling: in its return
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
