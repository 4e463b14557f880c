"""Streaming ingest of the solver's training snapshots, the replay buffers and the running
normalisation statistics. Plain numpy; the distributed parts live in the loop module.

Every snapshot is checked before it reaches a buffer: a bad one (not a tensor, a key of the
wrong type, an integer dtype, a wrong shape, rows that differ between inputs and targets,
another width than the first snapshot's, a NaN or infinity) is skipped with a warning naming its
key and counted by reason (``Skips``), so one bad record neither kills the trainer nor poisons
the model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import keys
from ..client import Client
from ..errors import KeyNotFoundError, ServerError, TensorFormatError

STD_FLOOR = 1e-8  # a constant feature must not divide by zero
MEMBERS_REFRESH = 1.0  # s: how often a reader looks again for solver ranks that joined
MAX_SKIPS_IN_A_ROW = 20  # bad snapshots in a row that end training (the solver streams garbage)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Snapshot:
    rank: int
    seq: int
    step: int
    time: float
    inputs: np.ndarray  # [n, n_in]
    targets: np.ndarray  # [n, n_out]


def parse_announcement(entry: bytes) -> Tuple[int, int, float]:
    """Parses the announcement "<seq> <step> <time>"; ValueError when malformed."""
    seq, step, when = entry.decode().split()
    return int(seq), int(step), float(when)


@dataclass
class Skips:
    """The snapshots refused, counted by reason, and how many in a row (reset by a good one)."""

    counts: Dict[str, int] = field(default_factory=dict)
    in_a_row: int = 0
    last: str = ""

    def record(self, key: str, reason: str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.in_a_row += 1
        self.last = f"{key!r} ({reason}: {detail})"
        print(f"warning: skipping snapshot {key!r}: {detail}", file=sys.stderr, flush=True)

    def accepted(self) -> None:
        self.in_a_row = 0


def snapshot_problem(inputs: np.ndarray, targets: np.ndarray,
                     dims: Optional[Tuple[int, int]]) -> Optional[Tuple[str, str]]:
    """(reason, detail) when a decoded snapshot cannot be trained on; None when it can.
    ``dims`` is the (n_in, n_out) of the first snapshot taken, None before it."""
    for name, array in (("inputs", inputs), ("targets", targets)):
        if array.dtype not in FLOAT_DTYPES:
            return "dtype", f"{name} are {array.dtype.name}; stream float32 or float64"
        if array.ndim != 2 or 0 in array.shape[1:]:
            return "shape", (f"{name} have shape {tuple(array.shape)}; expected [n, n_features] "
                             "with n_features >= 1")
    if inputs.shape[0] != targets.shape[0]:
        return "rows", f"{inputs.shape[0]} input rows but {targets.shape[0]} target rows"
    widths = (inputs.shape[1], targets.shape[1])
    if dims is not None and widths != dims:
        return "width", (f"{widths[0]} inputs / {widths[1]} targets per sample, the first "
                         f"snapshot had {dims[0]} / {dims[1]}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range is an infinity here
        for name, array in (("inputs", inputs), ("targets", targets)):
            if not np.isfinite(array.astype(np.float32, copy=False)).all():
                return "nonfinite", f"{name} hold NaN or infinite values (in float32)"
    return None


def validation_period(fraction: float) -> Optional[int]:
    """Every ``period``-th snapshot (by seq) is held out; None when nothing is."""
    return round(1.0 / fraction) if fraction > 0 else None


def is_validation(seq: int, period: Optional[int]) -> bool:
    return period is not None and seq % period == 0


class SnapshotReader:
    """Consumes the snapshots of the solver ranks that this trainer rank owns.

    The solver ranks registered on the server are split round-robin over the ``share`` trainer
    ranks that use the same server; this one is number ``position`` among them. Every snapshot
    read is removed (index entry and tensors), so nothing is read twice and the database stays
    bounded.
    """

    def __init__(self, client: Client, ns: str, position: int, share: int):
        self.client = client
        self.ns = ns
        self.position = position
        self.share = share
        self.skips = Skips()
        self.dims: Optional[Tuple[int, int]] = None  # (n_in, n_out) of the first good snapshot
        self._ranks: List[int] = []
        self._ranks_read = 0.0

    def solver_ranks(self) -> List[int]:
        """The owned ranks, read again at most every MEMBERS_REFRESH seconds once there are
        some (a rank that joins later is owned within that time)."""
        now = time.monotonic()
        if self._ranks and now - self._ranks_read < MEMBERS_REFRESH:
            return self._ranks
        key = keys.solver_members(self.ns)
        members = self.client.command(["SMEMBERS", key], key=key) or []
        self._ranks = sorted(int(m) for m in members)[self.position::self.share]
        self._ranks_read = now
        return self._ranks

    def read_available(self) -> List[Snapshot]:
        """Every snapshot announced so far by the owned ranks; returns at once when none is.
        Three round trips for all of them together: their index lists, their tensors, and the
        removal of what was read."""
        ranks = self.solver_ranks()
        if not ranks:
            return []
        lists = self.client.pipeline([("LRANGE", keys.snapshot_index(self.ns, rank), 0, -1)
                                      for rank in ranks])
        announced = {rank: entries for rank, entries in zip(ranks, lists) if entries}
        return self._consume_all(announced) if announced else []

    def _consume_all(self, announced: Dict[int, List[bytes]]) -> List[Snapshot]:
        """Two round trips for all ``announced`` entries (rank -> index entries): their tensors
        (pipelined GETs), then the index entries and tensors removed (pipelined). A rank with a
        malformed entry, or all of them when a tensor was dropped meanwhile or is bad, one entry
        at a time, so that each is judged (and counted) on its own."""
        one_by_one: List[Tuple[int, bytes]] = []
        parsed: List[Tuple[int, bytes, Tuple[int, int, float]]] = []
        for rank, entries in announced.items():
            try:
                parsed += [(rank, entry, parse_announcement(entry)) for entry in entries]
            except ValueError:
                one_by_one += [(rank, entry) for entry in entries]
        tensor_keys = []
        for rank, _, (seq, _, _) in parsed:
            tensor_keys += [keys.snapshot_inputs(self.ns, rank, seq),
                            keys.snapshot_targets(self.ns, rank, seq)]
        arrays: List[np.ndarray] = []
        if tensor_keys:
            try:
                arrays = self.client.get_tensors(tensor_keys)
            except (KeyNotFoundError, TensorFormatError, ServerError):
                # dropped by the solver's retention limit meanwhile, or a bad record
                one_by_one += [(rank, entry) for rank, entry, _ in parsed]
                parsed, tensor_keys = [], []
        if parsed:
            self.client.pipeline(
                [("LREM", keys.snapshot_index(self.ns, rank), 1, entry) for rank, entry, _ in parsed]
                + [("DEL", key) for key in tensor_keys])
        snapshots = [s for s in (self._consume(rank, entry) for rank, entry in one_by_one)
                     if s is not None]
        for i, (rank, _, (seq, step, when)) in enumerate(parsed):
            inputs, targets = arrays[2 * i], arrays[2 * i + 1]
            problem = snapshot_problem(inputs, targets, self.dims)
            if problem is not None:
                self.skips.record(tensor_keys[2 * i], *problem)
                continue
            self.dims = self.dims or (inputs.shape[1], targets.shape[1])
            self.skips.accepted()
            snapshots.append(Snapshot(rank, seq, step, when, inputs, targets))
        return snapshots

    def _consume(self, rank: int, entry: bytes) -> Optional[Snapshot]:
        index = keys.snapshot_index(self.ns, rank)
        try:
            seq, step, when = parse_announcement(entry)
        except (ValueError, UnicodeDecodeError):
            self.skips.record(index, "announcement",
                              f"malformed entry {entry!r} (expected '<seq> <step> <time>')")
            self.client.command(["LREM", index, "1", entry], key=index)
            return None
        x_key = keys.snapshot_inputs(self.ns, rank, seq)
        y_key = keys.snapshot_targets(self.ns, rank, seq)
        inputs = targets = None
        problem = None
        try:
            inputs = self.client.get_tensor(x_key)
            targets = self.client.get_tensor(y_key)
        except KeyNotFoundError:
            inputs = None  # dropped by the solver's retention limit meanwhile: not a bad record
        except (TensorFormatError, ServerError) as exc:
            # the server's WRONGTYPE: the key holds a list, a set... instead of a string
            problem = ("type" if "WRONGTYPE" in str(exc) else "format", str(exc))
        self.client.command(["LREM", index, "1", entry], key=index)
        self.client.command(["DEL", x_key, y_key], key=x_key)
        if problem is None and inputs is not None:
            problem = snapshot_problem(inputs, targets, self.dims)
        if problem is not None:
            self.skips.record(x_key, *problem)
            return None
        if inputs is None:
            return None
        self.dims = self.dims or (inputs.shape[1], targets.shape[1])
        self.skips.accepted()
        return Snapshot(rank, seq, step, when, inputs, targets)


class ReplayBuffer:
    """A ring of at most ``capacity`` (input, target) rows; the oldest rows are replaced."""

    def __init__(self, capacity: int, n_in: int, n_out: int):
        self.capacity = int(capacity)
        self.inputs = np.empty((self.capacity, n_in), dtype=np.float32)
        self.targets = np.empty((self.capacity, n_out), dtype=np.float32)
        self.size = 0
        self.next = 0  # where the next row goes

    def __len__(self) -> int:
        return self.size

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        rows = inputs.shape[0]
        if rows > self.capacity:  # only the newest rows can survive anyway
            inputs, targets, rows = inputs[-self.capacity:], targets[-self.capacity:], self.capacity
        slots = (self.next + np.arange(rows)) % self.capacity
        self.inputs[slots] = inputs
        self.targets[slots] = targets
        self.next = (self.next + rows) % self.capacity
        self.size = min(self.capacity, self.size + rows)

    def sample(self, rng: np.random.Generator, count: int) -> Tuple[np.ndarray, np.ndarray]:
        """``count`` rows drawn uniformly with replacement."""
        rows = rng.integers(0, self.size, size=count)
        return self.inputs[rows], self.targets[rows]

    def contents(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.inputs[:self.size], self.targets[:self.size]


class RunningStats:
    """Count, sum and sum of squares per feature of everything this rank added.

    ``vector()`` packs them for an allreduce; ``moments`` turns a (reduced) vector into mean
    and standard deviation.
    """

    def __init__(self, features: int):
        self.features = features
        self.count = 0
        self.sum = np.zeros(features)
        self.sumsq = np.zeros(features)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        self.count += rows.shape[0]
        self.sum += rows.sum(axis=0)
        self.sumsq += np.square(rows).sum(axis=0)

    def vector(self) -> np.ndarray:
        return np.concatenate([[self.count], self.sum, self.sumsq])


def moments(vector: np.ndarray, features: int) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, std) from a RunningStats vector; std is floored at STD_FLOOR."""
    count = max(vector[0], 1.0)
    mean = vector[1:1 + features] / count
    var = np.maximum(vector[1 + features:1 + 2 * features] / count - mean ** 2, 0.0)
    return mean, np.maximum(np.sqrt(var), STD_FLOOR)


@dataclass
class Window:
    """The solver steps and times of the snapshots taken (training and validation alike)."""

    snapshots: int = 0
    first_step: Optional[int] = None
    last_step: Optional[int] = None
    first_time: Optional[float] = None
    last_time: Optional[float] = None

    def add(self, step: int, when: float) -> None:
        self.snapshots += 1
        if self.first_step is None or step < self.first_step:
            self.first_step, self.first_time = step, when
        if self.last_step is None or step > self.last_step:
            self.last_step, self.last_time = step, when

    def merge(self, other: "Window") -> "Window":
        """Both windows as one (the snapshots of several ranks, or of a resumed run)."""
        merged = Window(self.snapshots + other.snapshots, self.first_step, self.last_step,
                        self.first_time, self.last_time)
        if other.first_step is not None and (merged.first_step is None
                                             or other.first_step < merged.first_step):
            merged.first_step, merged.first_time = other.first_step, other.first_time
        if other.last_step is not None and (merged.last_step is None
                                            or other.last_step > merged.last_step):
            merged.last_step, merged.last_time = other.last_step, other.last_time
        return merged

    def as_dict(self) -> dict:
        return dict(vars(self))


class Samples:
    """What one trainer rank holds: training and validation buffers plus the statistics of
    the training rows (the normalisation is fitted on training data only). The buffers are
    allocated by the first snapshot, which fixes the number of inputs and targets."""

    def __init__(self, capacity: int, validation_capacity: int, period: Optional[int]):
        self.capacity = capacity
        self.validation_capacity = max(1, validation_capacity)
        self.period = period
        self.snapshots = 0  # consumed by this rank, training and validation
        self.validation_snapshots = 0
        self.window = Window()
        self.rows = 0
        self.train: Optional[ReplayBuffer] = None
        self.validation: Optional[ReplayBuffer] = None
        self.input_stats: Optional[RunningStats] = None
        self.target_stats: Optional[RunningStats] = None

    @property
    def dims(self) -> Tuple[int, int]:
        """(n_in, n_out), (0, 0) before the first snapshot."""
        return ((self.input_stats.features, self.target_stats.features)
                if self.train is not None else (0, 0))

    @property
    def train_rows(self) -> int:
        return len(self.train) if self.train else 0

    def add(self, snapshot: Snapshot) -> None:
        n_in, n_out = snapshot.inputs.shape[1], snapshot.targets.shape[1]
        if self.train is None:
            self._allocate(n_in, n_out)
        elif (n_in, n_out) != self.dims:
            raise TensorFormatError(
                f"snapshot {snapshot.seq} of solver rank {snapshot.rank} has {n_in} inputs / "
                f"{n_out} targets per sample, earlier ones had {self.dims[0]} / {self.dims[1]}")
        self.snapshots += 1
        self.rows += snapshot.inputs.shape[0]
        self.window.add(snapshot.step, snapshot.time)
        if is_validation(snapshot.seq, self.period):
            self.validation_snapshots += 1
            self.validation.add(snapshot.inputs, snapshot.targets)
            return
        self.train.add(snapshot.inputs, snapshot.targets)
        self.input_stats.add(snapshot.inputs)
        self.target_stats.add(snapshot.targets)

    def _allocate(self, n_in: int, n_out: int) -> None:
        self.train = ReplayBuffer(self.capacity, n_in, n_out)
        self.validation = ReplayBuffer(self.validation_capacity, n_in, n_out)
        self.input_stats = RunningStats(n_in)
        self.target_stats = RunningStats(n_out)
