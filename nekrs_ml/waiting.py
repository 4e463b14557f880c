"""Waiting until something is ready (a server, a host, a model worker), with a time limit; on
the ground floor beside nekrs_ml.processes, importing nothing of nekrs_ml but its errors."""

from __future__ import annotations

import time
from typing import Callable, Optional

from .errors import TimeoutError as NekrsMLTimeoutError


class WaitTimeoutError(NekrsMLTimeoutError):
    """What was waited for was not ready within its time limit (the message names it)."""


def wait_until(ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.1,
               check: Optional[Callable[[], None]] = None, see: str = "") -> None:
    """Returns once ``ready()`` is true, asking every ``interval`` seconds. ``check`` runs
    before each wait and raises to give up early (the process that was to make it ready has
    died). After ``timeout`` seconds: WaitTimeoutError "<what>: not ready within <timeout> s
    (<see>)"."""
    deadline = time.monotonic() + timeout
    while not ready():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            where = f" ({see})" if see else ""
            raise WaitTimeoutError(f"{what}: not ready within {timeout:g} s{where}")
        time.sleep(interval)
