"""Snapshots dropped while the trainer trains are never silent: `nekrs-ml run` reads the solver
ranks' drop counters as the run goes, warns as soon as snapshots are dropped (and again while
it goes on), and ends a run that dropped more than maxDropFraction of what was streamed
meanwhile with status data_dropped instead of ok.

A snapshot is dropped when a rank's maxSnapshots are pending (whenFull = drop) or the server
is full: the trainer is too slow, or stopped. Only drops while the trainer trains count: those
before its first epoch (it is still starting: importing torch, waiting for data) and after it
finished (converged, maxEpochs, failed) are by design, and a short run on a busy machine would
otherwise end data_dropped for its start-up alone."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

from .. import keys
from ..errors import NekrsMLError
from .progress import stream_counts

ACTIVE_STATES = ("training",)  # the trainer state in which dropped data is data lost


class DropWatch:
    POLL_EVERY = 2.0   # s between reads of the counters (two GETs per solver rank, pipelined)
    WARN_EVERY = 30.0  # s between two warnings while drops go on

    def __init__(self, client, ns: str, ranks: int, max_fraction: float,
                 warn: Callable[[str], None]):
        self.client, self.ns, self.ranks = client, ns, ranks
        self.max_fraction = max_fraction
        self.warn = warn
        self.seen_dropped = self.seen_streamed = 0  # the counters at the last poll
        self.dropped = self.streamed = 0  # while the trainer trained
        self.last_poll = self.last_warning = 0.0
        self.unwarned = 0  # dropped since the last warning
        self.unwarned_since = time.monotonic()

    def counters(self):
        announced, dropped = stream_counts(self.client, self.ns, range(self.ranks))
        return dropped, announced

    def poll(self, trainer_running: bool, trainer_state: Optional[str], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_poll < self.POLL_EVERY:
            return
        self.last_poll = now
        try:
            dropped, streamed = self.counters()
        except (NekrsMLError, ValueError):
            return
        new_dropped = max(0, dropped - self.seen_dropped)
        new_streamed = max(0, streamed - self.seen_streamed)
        self.seen_dropped, self.seen_streamed = dropped, streamed
        if not (trainer_running and trainer_state in ACTIVE_STATES):
            return
        self.dropped += new_dropped
        self.streamed += new_streamed
        self.unwarned += new_dropped
        if self.unwarned and (not self.last_warning or force
                              or now - self.last_warning >= self.WARN_EVERY):
            self.warn(self.warning(now))
            self.last_warning, self.unwarned, self.unwarned_since = now, 0, now

    def warning(self, now: float) -> str:
        try:
            alive = self.client.exists(keys.trainer_alive(self.ns))
        except NekrsMLError:
            alive = True
        reason = ("the trainer does not keep up with the solver" if alive else
                  "the trainer has no heartbeat: stopped, frozen or starved of CPU")
        span = now - (self.unwarned_since if self.last_warning else now - self.POLL_EVERY)
        return (f"{self.unwarned} snapshot(s) dropped in the last {max(span, 1.0):.0f} s, "
                f"{self.dropped} of the {self.streamed} streamed while the trainer trains "
                f"({self.fraction():.0%}): {reason}, and the model never sees them. Raise "
                "maxSnapshots or sampleInterval, give the trainer more ranks or a GPU, or set "
                f"whenFull = wait; above maxDropFraction = {self.max_fraction:g} the run ends "
                "as data_dropped")

    def fraction(self) -> float:
        return min(1.0, self.dropped / self.streamed) if self.streamed else 0.0

    def exceeded(self) -> bool:
        return self.fraction() > self.max_fraction

    def as_dict(self) -> Dict:
        return {"dropped_while_training": self.dropped,
                "streamed_while_training": self.streamed,
                "fraction": self.fraction(), "max_fraction": self.max_fraction}
