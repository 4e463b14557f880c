"""The run's progress as the launcher shows it: read from the database (the solver's step,
time and snapshots, the trainer's status, the solver's use of the model), drawn as one line."""

from __future__ import annotations

import json
import sys
import time
from typing import Dict, Iterable, Optional, Tuple

from .. import keys
from ..client import Client
from .flow import FlowStatistics

Reading = Tuple[int, Optional[float], int, Dict, Optional[Dict]]


def nothing_read() -> Reading:
    """What the progress line shows while the database does not answer."""
    return 0, None, 0, {}, None


def stream_counts(client: Client, ns: str, ranks: Iterable[int]) -> Tuple[int, int]:
    """(announced, dropped): the snapshots that solver ranks ``ranks`` announced and dropped so
    far, summed over their counters in one round trip per server (a rank whose counters are on
    another host's server counts 0)."""
    asked = [key for rank in ranks
             for key in (keys.snapshot_announced(ns, rank), keys.snapshot_dropped(ns, rank))]
    if not asked:
        return 0, 0
    replies = client.pipeline([("GET", key) for key in asked])
    return sum(int(value or 0) for value in replies[0::2]), \
        sum(int(value or 0) for value in replies[1::2])


def read_progress(client: Client, ns: str, ranks: int, inferring: bool,
                  flow_stats: FlowStatistics) -> Reading:
    """(step, simulation time, snapshots, trainer status, solver's inference record) of a
    solver of ``ranks`` ranks, draining the flow-statistics records on the way; a database that
    does not answer raises NekrsMLError, a record that does not parse ValueError."""
    step = int(client.get_string(keys.solver_step(ns)) or 0)
    raw_time = client.get_string(keys.solver_time(ns))
    sim_time = float(raw_time) if raw_time else None
    snapshots, _ = stream_counts(client, ns, range(ranks))
    raw = client.get_string(keys.trainer_status(ns))
    status = json.loads(raw) if raw else {}
    raw = client.get_string(keys.solver_inference(ns)) if inferring else None
    inference = json.loads(raw) if raw else None
    flow_stats.drain(client, ns)
    return step, sim_time, snapshots, status, inference


class Progress:
    """One status line, redrawn in place on a terminal; otherwise printed at most every
    PRINT_EVERY seconds when it changed, and every QUIET_EVERY seconds when it did not (a log
    file gets lines that say something, not carriage returns or a page of repeats while the
    solver builds)."""

    PRINT_EVERY = 5.0
    QUIET_EVERY = 60.0

    def __init__(self, total_steps: Optional[int], end_time: Optional[float] = None):
        self.total = total_steps
        self.end_time = end_time
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0
        self.last_text = ""

    def show(self, step: int, sim_time: Optional[float], snapshots: int, status: Dict,
             inference: Optional[Dict] = None) -> None:
        width = 30
        if self.total:
            frac = min(1.0, step / self.total)
        elif self.end_time and sim_time is not None:
            frac = min(1.0, sim_time / self.end_time)
        else:
            frac = 0.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        loss = status.get("val_loss") if status.get("val_loss") is not None else status.get("train_loss")
        where = f"step {step}/{self.total or '?'}"
        if self.end_time and sim_time is not None:
            where += f"  t {sim_time:.4g}/{self.end_time:g}"
        text = f"[{bar}] {where}"
        if status or not inference:  # a training run
            text += (f"  snapshots {snapshots}  epoch {status.get('epoch', '-')}  "
                     f"loss {loss if loss is None else f'{loss:.3e}'}  "
                     f"trained v{status.get('model_version') or '-'}  "
                     f"{status.get('state', 'waiting')}")
        if inference:
            calls = inference.get("calls") or 0
            share = (inference.get("predicted") or 0) / calls if calls else 0.0
            text += (f"  solver uses v{inference.get('version') or '-'}  "
                     f"predicted {share:.0%} of {calls} calls")
            if inference.get("waiting_for"):
                text += f"  waiting: {short(inference['waiting_for'])}"
        if self.tty:
            print("\r" + text.ljust(120), end="", flush=True)
            return
        since = time.monotonic() - self.last_print
        if since > (self.PRINT_EVERY if text != self.last_text else self.QUIET_EVERY):
            print(text, flush=True)
            self.last_print, self.last_text = time.monotonic(), text

    def done(self) -> None:
        if self.tty:
            print()


def short(text: str, limit: int = 90) -> str:
    """The start of a long reason, for the one-line progress display."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
