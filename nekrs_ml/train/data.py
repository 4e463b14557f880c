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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import keys
from ..client import Client
from ..errors import KeyNotFoundError, NekrsMLError, ServerError, TensorFormatError

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
    stream: str = "solver"  # the name of the stream (ensemble member) it came from


@dataclass(frozen=True)
class Stream:
    """One solver run's training stream: its name (the ensemble member) and namespace."""

    name: str
    ns: str


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


class StreamState:
    """What the reader knows of one stream: its owned solver ranks and consumer group (read
    again at most every MEMBERS_REFRESH s), the bad snapshots skipped and the ones this consumer
    missed (``dropped``: gaps in SEQ behind its cursor)."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.skips = Skips()
        self.dropped = 0
        self.cursors: Dict[int, int] = {}  # rank -> last SEQ read (the database's may lag)
        self.ranks: List[int] = []
        self.consumers: List[str] = []
        self.read_at = 0.0


class SnapshotReader:
    """Consumes the snapshots of the solver ranks that this trainer rank owns, of every stream.

    The solver ranks of each stream are split round-robin over the ``share`` trainer ranks that
    use the same server; this one is number ``position`` among them. Every consumer (trainer) of
    a stream keeps its own cursor per solver rank (the last SEQ it read) and reads only what lies
    beyond it; an entry (index entry and tensors) is removed once every consumer of the stream's
    group has read it, so several trainers each see every snapshot and the database stays
    bounded. A group of one consumes what it reads at once.
    """

    def __init__(self, client: Client, ns, position: int, share: int,
                 consumer: str = "trainer", streams: Optional[Sequence[Stream]] = None):
        self.client = client
        self.position = position
        self.share = share
        self.consumer = consumer
        self.streams = {s.name: StreamState(s) for s in (streams or [Stream("solver", ns)])}
        self.dims: Optional[Tuple[int, int]] = None  # (n_in, n_out) of the first good snapshot

    @property
    def ns(self) -> str:
        """The namespace of the first stream (the only one of a single-stream trainer)."""
        return next(iter(self.streams.values())).stream.ns

    @property
    def skips(self) -> Skips:
        """The skips of all streams together (in a row: the worst stream's)."""
        total = Skips()
        for state in self.streams.values():
            for reason, count in state.skips.counts.items():
                total.counts[reason] = total.counts.get(reason, 0) + count
            if state.skips.in_a_row >= total.in_a_row:
                total.in_a_row, total.last = state.skips.in_a_row, state.skips.last
        return total

    def join(self) -> None:
        """Adds this consumer to the group of every stream (a launcher may have done so
        already, before the solvers started: then nothing is consumed before it read it)."""
        self.client.pipeline([("SADD", keys.stream_consumers(s.stream.ns), self.consumer)
                              for s in self.streams.values()])

    def refresh(self) -> None:
        """The owned ranks and the group of every stream, read again at most every
        MEMBERS_REFRESH seconds once there are some (a rank that joins later is owned within
        that time)."""
        now = time.monotonic()
        stale = [s for s in self.streams.values()
                 if not s.ranks or now - s.read_at >= MEMBERS_REFRESH]
        if not stale:
            return
        replies = self.client.pipeline(
            [cmd for s in stale for cmd in (("SMEMBERS", keys.solver_members(s.stream.ns)),
                                            ("SMEMBERS", keys.stream_consumers(s.stream.ns)))])
        for i, state in enumerate(stale):
            members, consumers = replies[2 * i] or [], replies[2 * i + 1] or []
            state.ranks = sorted(int(m) for m in members)[self.position::self.share]
            state.consumers = sorted(_text(c) for c in consumers)
            state.read_at = now

    def read_available(self) -> List[Snapshot]:
        """Every snapshot announced so far by the owned ranks of every stream beyond this
        consumer's cursors; returns at once when none is. Three round trips for all of them
        together: their index lists and cursors, their tensors, and the new cursors with the
        removal of what the whole group has read."""
        self.refresh()
        owned = [(state, rank) for state in self.streams.values() for rank in state.ranks]
        if not owned:
            return []
        replies = self.client.pipeline(
            [cmd for state, rank in owned
             for cmd in (("LRANGE", keys.snapshot_index(state.stream.ns, rank), 0, -1),
                         ("HGETALL", keys.stream_cursors(state.stream.ns, rank)))])
        ranks = [RankRead(state, rank, replies[2 * i] or [], _cursors(replies[2 * i + 1]),
                          self.consumer)
                 for i, (state, rank) in enumerate(owned)]
        ranks = [r for r in ranks if r.entries]
        return self._consume_all(ranks) if ranks else []

    def _consume_all(self, ranks: List["RankRead"]) -> List[Snapshot]:
        """Two round trips for the new entries of all ``ranks``: their tensors (pipelined GETs),
        then the cursors and the removal of what every consumer has read (pipelined). When a
        tensor was dropped meanwhile or is bad, the tensors are read one entry at a time, so
        that each is judged (and counted) on its own."""
        wanted = [(r, seq, step, when) for r in ranks for seq, step, when in r.new()]
        tensor_keys = []
        for r, seq, _, _ in wanted:
            tensor_keys += [keys.snapshot_inputs(r.ns, r.rank, seq),
                            keys.snapshot_targets(r.ns, r.rank, seq)]
        arrays: List[Optional[np.ndarray]] = []
        problems: List[Optional[Tuple[str, str]]] = [None] * len(wanted)
        if tensor_keys:
            try:
                arrays = self.client.get_tensors(tensor_keys)
            except (KeyNotFoundError, TensorFormatError, ServerError):
                # dropped by the solver's retention limit meanwhile, or a bad record
                arrays = []
                for i in range(len(wanted)):
                    pair, problems[i] = self._get_one(tensor_keys[2 * i], tensor_keys[2 * i + 1])
                    arrays += pair
        commands = []
        for r in ranks:
            commands += r.finish_commands(self.streams[r.state.stream.name].consumers)
        if commands:
            self.client.pipeline(commands)
        snapshots = []
        for r in ranks:
            r.state.dropped += r.dropped
            for entry in r.malformed:
                r.state.skips.record(keys.snapshot_index(r.ns, r.rank), "announcement",
                                     f"malformed entry {entry!r} (expected '<seq> <step> <time>')")
        for i, (r, seq, step, when) in enumerate(wanted):
            inputs, targets = arrays[2 * i], arrays[2 * i + 1]
            problem = problems[i]
            if problem is None and inputs is None:
                continue  # dropped by the solver's retention limit meanwhile: not a bad record
            if problem is None:
                problem = snapshot_problem(inputs, targets, self.dims)
            if problem is not None:
                r.state.skips.record(tensor_keys[2 * i], *problem)
                continue
            self.dims = self.dims or (inputs.shape[1], targets.shape[1])
            r.state.skips.accepted()
            snapshots.append(Snapshot(r.rank, seq, step, when, inputs, targets,
                                      r.state.stream.name))
        return snapshots

    def _get_one(self, x_key: str, y_key: str):
        """([inputs, targets] or [None, None], problem or None) of one snapshot."""
        try:
            return [self.client.get_tensor(x_key), self.client.get_tensor(y_key)], None
        except KeyNotFoundError:
            return [None, None], None
        except (TensorFormatError, ServerError) as exc:
            # the server's WRONGTYPE: the key holds a list, a set... instead of a string
            return [None, None], ("type" if "WRONGTYPE" in str(exc) else "format", str(exc))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cursors(reply) -> Dict[str, int]:
    """An HGETALL reply (a flat list or a dict) as consumer -> cursor; a value that is not an
    integer counts as no cursor (that consumer then holds every entry)."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[0::2], reply[1::2]) \
        if reply else []
    cursors = {}
    for name, value in pairs:
        try:
            cursors[_text(name)] = int(value)
        except (TypeError, ValueError):
            continue
    return cursors


class RankRead:
    """One solver rank's index entries as one consumer reads them: which are new (SEQ beyond
    its cursor), how many it missed, and which the whole group has read."""

    def __init__(self, state: StreamState, rank: int, entries: List[bytes],
                 cursors: Dict[str, int], consumer: str):
        self.state, self.rank, self.entries = state, rank, entries
        self.ns = state.stream.ns
        self.cursors, self.consumer = cursors, consumer
        self.parsed: List[Tuple[bytes, Tuple[int, int, float]]] = []
        self.malformed: List[bytes] = []
        for entry in entries:
            try:
                self.parsed.append((entry, parse_announcement(entry)))
            except (ValueError, UnicodeDecodeError):
                self.malformed.append(entry)
        # SEQ counts from 0; a consumer alone in its group keeps its cursor in memory
        self.cursor = max(cursors.get(consumer, -1), state.cursors.get(rank, -1))
        self.dropped = 0

    def new(self) -> List[Tuple[int, int, float]]:
        """The entries beyond the cursor, by SEQ; counts the gaps before and between them."""
        fresh = sorted(p for _, p in self.parsed if p[0] > self.cursor)
        previous = self.cursor
        for seq, _, _ in fresh:
            self.dropped += max(0, seq - previous - 1)
            previous = seq
        if fresh:
            self.cursor = fresh[-1][0]
            self.state.cursors[self.rank] = self.cursor
        return fresh

    def finish_commands(self, group: List[str]) -> list:
        """The new cursor and the removal of the entries every consumer of ``group`` has read
        (a member without a cursor holds them all; malformed entries go at once)."""
        index, cursors = keys.snapshot_index(self.ns, self.rank), \
            keys.stream_cursors(self.ns, self.rank)
        others = [self.cursors.get(name) for name in group if name != self.consumer]
        # alone in its group a consumer removes all it read: its cursor lives in memory only
        # and nothing is left behind in the database (a single trainer, as without groups)
        commands = [("HSET", cursors, self.consumer, str(self.cursor))] if others else []
        floor = min([self.cursor] + [(-1 if c is None else c) for c in others])
        for entry, (seq, _, _) in self.parsed:
            if seq <= floor:
                commands += [("LREM", index, 1, entry),
                             ("DEL", keys.snapshot_inputs(self.ns, self.rank, seq),
                              keys.snapshot_targets(self.ns, self.rank, seq))]
        commands += [("LREM", index, 1, entry) for entry in self.malformed]
        return commands


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


class Members:
    """The samples of every stream (ensemble member) apart: a replay buffer and held-out rows
    each, so that a mini-batch can draw from the members evenly (``memberSampling``) and the
    validation loss weighs each member alike. The normalisation statistics are those of all
    training rows together."""

    def __init__(self, names: Sequence[str], capacity: int, validation_capacity: int,
                 period: Optional[int]):
        self.by_name: Dict[str, Samples] = {name: Samples(capacity, validation_capacity, period)
                                            for name in names}

    def add(self, snapshot: Snapshot) -> None:
        self.by_name[snapshot.stream].add(snapshot)

    def _allocated(self) -> List[Samples]:
        return [s for s in self.by_name.values() if s.train is not None]

    @property
    def dims(self) -> Tuple[int, int]:
        """(n_in, n_out) of what is stored, (0, 0) before the first snapshot."""
        allocated = self._allocated()
        return allocated[0].dims if allocated else (0, 0)

    @property
    def train_rows(self) -> int:
        return sum(s.train_rows for s in self.by_name.values())

    @property
    def snapshots(self) -> int:
        return sum(s.snapshots for s in self.by_name.values())

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.by_name.values())

    @property
    def validation_snapshots(self) -> int:
        return sum(s.validation_snapshots for s in self.by_name.values())

    @property
    def window(self) -> Window:
        merged = Window()
        for samples in self.by_name.values():
            merged = merged.merge(samples.window)
        return merged

    def stats_vectors(self, n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
        """The RunningStats vectors of the inputs and the targets of all streams summed."""
        inputs, targets = RunningStats(n_in).vector(), RunningStats(n_out).vector()
        for samples in self._allocated():
            inputs = inputs + samples.input_stats.vector()
            targets = targets + samples.target_stats.vector()
        return inputs, targets

    def sample(self, rng: np.random.Generator, count: int,
               sampling: str = "balanced") -> Tuple[np.ndarray, np.ndarray]:
        """``count`` training rows: ``balanced`` draws the same number from every stream that
        has data (a member with few rows is not drowned by one with many), ``proportional``
        draws uniformly from all rows together."""
        filled = [s.train for s in self.by_name.values() if s.train_rows]
        if len(filled) == 1:
            return filled[0].sample(rng, count)
        if sampling == "proportional":
            sizes = np.array([len(b) for b in filled], dtype=np.float64)
            counts = rng.multinomial(count, sizes / sizes.sum())
        else:
            counts = np.full(len(filled), count // len(filled))
            counts[:count - int(counts.sum())] += 1
        parts = [b.sample(rng, int(n)) for b, n in zip(filled, counts) if n]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


class PendingCases:
    """Wall-unit features need each stream's case record (nekrs_ml.models.features); a
    snapshot that arrives before it waits here, at most ``limit`` per stream (the oldest
    beyond are dropped and counted), and a stream whose record stays missing ``timeout``
    seconds after its first snapshot fails the trainer."""

    def __init__(self, streams: Sequence[Stream], timeout: float, limit: int = 64):
        self.streams = {s.name: s for s in streams}
        self.timeout, self.limit = timeout, limit
        self.cases: Dict[str, dict] = {}
        self.pending: Dict[str, List[Snapshot]] = {}
        self.since: Dict[str, float] = {}
        self.dropped: Dict[str, int] = {}

    def take(self, client: Client, snapshots: List[Snapshot]) -> List[Snapshot]:
        """The snapshots whose stream's case is known (the waiting ones included)."""
        from ..models.features import read_case

        for snapshot in snapshots:
            self.pending.setdefault(snapshot.stream, []).append(snapshot)
        ready: List[Snapshot] = []
        for name in [n for n, waiting in self.pending.items() if waiting]:
            stream = self.streams[name]
            if name not in self.cases:
                case = read_case(client, stream.ns)
                if case is None:
                    self._wait(name, stream)
                    continue
                self.cases[name] = case
            ready += self.pending.pop(name)
            self.since.pop(name, None)
        return ready

    def _wait(self, name: str, stream: Stream) -> None:
        now = time.monotonic()
        started = self.since.setdefault(name, now)
        waiting = self.pending[name]
        if len(waiting) > self.limit:
            excess = len(waiting) - self.limit
            self.dropped[name] = self.dropped.get(name, 0) + excess
            del waiting[:excess]
        if now - started > self.timeout:
            raise NekrsMLError(
                f"features = wall_units: stream {name!r} has sent snapshots for "
                f"{now - started:.0f} s but its case record {keys.solver_case(stream.ns)!r} "
                "(kinematic viscosity, sample height) is missing; the solver writes it at its "
                "start (update it), or set features = dimensional")
