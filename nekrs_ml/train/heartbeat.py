"""The trainer's heartbeat: a key that exists while a trainer process lives.

A solver that waits for the trainer to make room (whenFull = wait) checks it: with no live
trainer there is nobody to wait for, so it drops the snapshot at once (with a warning) instead of
waiting waitTimeout for every one (docs/protocol.md, "Training stream")."""

from __future__ import annotations

import threading
from typing import Callable

from .. import keys
from ..errors import NekrsMLError

TTL_MS = 10_000    # the key outlives a missed refresh or two, not a dead process
INTERVAL_S = 2.0


class Heartbeat:
    """Refreshes keys.trainer_alive from a thread of its own, on a connection of its own (the
    training loop's calls never wait for it)."""

    def __init__(self, connect: Callable, ns: str, trainer=None):
        self.connect = connect
        self.key = keys.trainer_alive(ns, trainer)  # a named trainer (--consumer) has its own
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="trainer-heartbeat", daemon=True)
        self.client = None

    def start(self) -> "Heartbeat":
        self.client = self.connect()
        self._set()  # alive before the first snapshot is awaited
        self.thread.start()
        return self

    def _set(self) -> None:
        self.client.command(["SET", self.key, "1", "PX", str(TTL_MS)], key=self.key)

    def _beat(self) -> None:
        while not self.stopping.wait(INTERVAL_S):
            try:
                self._set()
            except NekrsMLError:
                pass  # a busy or full server: the next beat tries again

    def stop(self) -> None:
        """The trainer is done: solvers stop waiting for it at once."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        if self.client is not None:
            try:
                self.client.delete(self.key)
            except NekrsMLError:
                pass
            self.client.close()
            self.client = None
