"""The model worker's helper threads, each with a connection of its own, so that the serving
thread never waits on the server between forward passes: RequestReceiver pops the requests,
ReplySender pushes the replies, Housekeeper beats the heartbeat and reads the registry's current
versions. A helper's failure is raised in the serving thread at its next call into the helper.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Callable, Dict, List, Optional


class _FailureCarrier:
    """A helper thread's failure, kept to be raised in the serving thread."""

    error: Optional[BaseException] = None

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class ReplySender(_FailureCarrier):
    """Sends the worker's replies on a connection and a thread of their own, so that the next
    forward pass runs while the last replies travel, as RedisAI's main thread talks to the
    clients while its backend thread computes (one pass of 25,000 points on a CPU core takes
    about 1 ms; pushing its replies and reading the server's answer 0.3-0.7 ms). The C++ core
    releases the GIL while it waits on the socket. A failed send is raised by the next send()
    or by close()."""

    def __init__(self, connection):
        self.connection = connection  # a nekrs_ml._core.Client
        self.pending: "queue.Queue[Optional[list]]" = queue.Queue()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="reply-sender", daemon=True)
        self.thread.start()

    def send(self, commands: list) -> None:
        self._raise()
        self.pending.put(commands)

    def _run(self) -> None:
        while True:
            commands = self.pending.get()
            if commands is None:
                return
            try:
                if self.error is None:
                    self.connection.pipeline(commands, True)
            except BaseException as exc:  # raised in the worker's thread by the next send
                self.error = exc

    def close(self, timeout: float = 10.0) -> None:
        """Sends what is queued (waiting at most ``timeout`` s), then closes the connection."""
        self.pending.put(None)
        self.thread.join(timeout)
        self.connection.close()
        self._raise()


class RequestReceiver:
    """Pops the worker's requests on a connection and a thread of their own, so that the next
    requests arrive while a forward pass runs (the other half of what ReplySender does). Holds
    at most ``limit`` requests the worker has not taken yet; a failed pop is raised by take().
    ``idle_wait`` (s) is its longest blocking pop, so that a stop stays timely."""

    def __init__(self, connection, key: str, limit: int, idle_wait: float):
        self.connection, self.key, self.limit = connection, key, limit
        self.idle_wait = idle_wait
        self.messages: "collections.deque[bytes]" = collections.deque()
        self.changed = threading.Condition()
        self.stopping = False
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="request-receiver", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping:
                with self.changed:
                    while len(self.messages) >= self.limit and not self.stopping:
                        self.changed.wait(self.idle_wait)
                    room = self.limit - len(self.messages)
                if self.stopping:
                    return
                got = self.connection.pipeline([("LPOP", self.key, room)], True)[0] or []
                if not got:  # nothing queued: wait for the next one, briefly (stop stays timely)
                    popped = self.connection.pop_message(self.key, self.idle_wait)
                    got = [popped[1]] if popped is not None else []
                if got:
                    with self.changed:
                        self.messages.extend(got)
                        self.changed.notify_all()
        except BaseException as exc:  # raised in the worker's thread by take()
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def take(self, most: int, wait: float) -> List[bytes]:
        """Up to ``most`` received requests, waiting at most ``wait`` s for one."""
        deadline = time.monotonic() + wait
        with self.changed:
            while not self.messages and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self.changed.wait(left)
            if not self.messages:
                error, self.error = self.error, None
                raise error
            taken = [self.messages.popleft() for _ in range(min(most, len(self.messages)))]
            self.changed.notify_all()  # room for the receiver
            return taken

    def stop(self, timeout: float = 10.0) -> List[bytes]:
        """Stops popping; returns the requests received and not taken (to be answered)."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join(timeout)
        self.connection.close()
        with self.changed:
            left, self.messages = list(self.messages), collections.deque()
        return left


class Housekeeper(_FailureCarrier):
    """Beats the worker's heartbeat and reads the registry's current versions on a thread of
    its own, so that the serving thread never waits on the server between passes (on a loaded
    host each such round trip cost it 0.3 ms to several ms: the thread gives up the core while it
    waits). Every ``tick`` s it calls ``beat()`` (the worker beats only while its serving loop
    turns), and every ``reload_interval`` s it stores ``read_versions()`` in ``latest``; the
    serving thread switches versions between batches. A failure (the server gone) is raised in
    the serving thread by check()."""

    def __init__(self, beat: Callable[[], None],
                 read_versions: Callable[[], Dict[str, Optional[int]]],
                 tick: float, reload_interval: float):
        self.beat, self.read_versions = beat, read_versions
        self.tick, self.reload_interval = tick, reload_interval
        self.latest: Dict[str, Optional[int]] = {}
        self.error: Optional[BaseException] = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_read = 0.0
        try:
            while not self.stopping.wait(self.tick):
                self.beat()
                now = time.monotonic()
                if now - last_read >= self.reload_interval:
                    self.latest = self.read_versions()
                    last_read = now
        except BaseException as exc:  # raised in the serving thread by check()
            self.error = exc

    def check(self) -> None:
        self._raise()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)
