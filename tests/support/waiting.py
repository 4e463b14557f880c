"""Waiting on a condition instead of sleeping a fixed time."""

import time


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Returns predicate()'s first true value; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
