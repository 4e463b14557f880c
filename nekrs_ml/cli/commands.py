"""The sub-command table of ``nekrs-ml``: each command module registers its commands here."""

from __future__ import annotations

import argparse
from typing import Callable, Dict, Tuple

# name -> (help, function that adds the arguments to the sub-parser and returns the handler)
COMMANDS: Dict[str, Tuple[str, Callable[[argparse.ArgumentParser], Callable]]] = {}


def command(name: str, help: str):
    """Registers ``build(parser)`` as the argument builder of sub-command ``name``; ``build``
    returns the handler, ``handler(args) -> exit code``."""
    def wrap(build: Callable[[argparse.ArgumentParser], Callable]):
        COMMANDS[name] = (help, build)
        return build
    return wrap
