"""Solver-to-trainer hand-off: a rank's snapshot reaching the trainer's memory, beside ADIOS2 SST.

For every size per step and every producer count (1 -> 1, 4 -> 1), in one run:

- ``nekrs_ml``: producer processes put snapshots ([n, 1] inputs + [n, 1] targets, float32) with
  the C++ TrainingStream, as solver ranks do (maxSnapshots = ``--queue``, whenFull = wait); the
  trainer's SnapshotReader consumes them in this process.
- ``adios2-sst``: writer processes stream the same bytes per step through ADIOS2's SST engine
  over its sockets data plane (DataTransport = WAN, QueueLimit = ``--queue``, blocking when
  full), one stream per writer; this process reads every stream.
- ``putget``: producer processes put each step's bytes under a key of its own; this process gets
  and deletes them (a plain put and get through the same server, nothing announced).

Every consumer polls its sources and pauses 0.1 ms when nothing had arrived.
Records: path, producers, size_bytes, bytes_per_s (bytes arriving in the consumer's memory per
second, from its first arrival to its last), p50_us (from the producer's put to the array in the
consumer, same host clock), steps; the nekrs_ml records add samples_per_s, the trainer reader's
ingest rate in wall points per second.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

NAMESPACE = "handoff"
DEFAULT_SIZES = (100 * 1024, 1024 * 1024, 16 * 1024 * 1024)
PATHS = ("nekrs_ml", "adios2-sst", "putget")
SETUP_TIMEOUT = 60.0   # s: producers connected and ready
CASE_TIMEOUT = 300.0   # s: all steps of one case consumed
READER_OPEN_TIMEOUT = 10  # s: an SST reader's contact with its writer
SST_ATTEMPTS = 3
IDLE_PAUSE = 1e-4      # s: a consumer that found nothing polls again after this pause


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(DEFAULT_SIZES), help="bytes per step, comma-separated")
    parser.add_argument("--producers", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 4], help="producer counts, comma-separated")
    parser.add_argument("--bytes-per-case", type=int, default=512 * 1024 * 1024,
                        help="bytes to move per (path, producers, size); sets the steps")
    parser.add_argument("--min-steps", type=int, default=8, help="fewest steps per producer")
    parser.add_argument("--queue", type=int, default=4,
                        help="steps a producer may run ahead (maxSnapshots, SST QueueLimit)")
    parser.add_argument("--transport", choices=("unix", "tcp"), default="unix",
                        help="how the nekrs_ml and putget paths reach the server")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated subset of " + ",".join(PATHS))


def steps_for(size: int, producers: int, args) -> int:
    return int(min(1000, max(args.min_steps, args.bytes_per_case // (size * producers))))


# --- producers (each in its own process) ---------------------------------------------------------

def stamped_payload(size: int) -> np.ndarray:
    """``size`` bytes whose first 8 hold the put time (time.monotonic, one clock per host)."""
    payload = np.random.default_rng(size).integers(0, 255, max(size, 8), dtype=np.uint8)
    return payload


def stamp(payload: np.ndarray) -> None:
    payload[:8].view(np.float64)[0] = time.monotonic()


def nekrs_ml_producer(addresses, password, rank, size, steps, queue, ready, go) -> None:
    from nekrs_ml import _core

    client = _core.Client(addresses, password=password)
    stream = _core.TrainingStream(client, NAMESPACE, rank, 1, queue, "wait", CASE_TIMEOUT)
    points = size // 8
    inputs = np.random.default_rng(rank).uniform(0.6, 1.1, (points, 1)).astype(np.float32)
    targets = (inputs ** 2 * 3e-3).astype(np.float32)
    ready.set()
    go.wait(SETUP_TIMEOUT)
    for step in range(steps):
        result = stream.put(step, time.monotonic(), inputs, targets)
        if not result["written"]:
            raise RuntimeError(f"rank {rank}: snapshot of step {step} not written: {result}")
    client.close()


def putget_producer(addresses, password, rank, size, steps, queue, ready, go) -> None:
    from nekrs_ml import _core

    client = _core.Client(addresses, password=password)
    payload = stamped_payload(size)
    ready.set()
    go.wait(SETUP_TIMEOUT)
    for step in range(steps):
        stamp(payload)
        client.put_tensor(f"{NAMESPACE}:pg:{rank}:{step}", payload)
    client.close()


def sst_parameters(queue: int) -> Dict[str, str]:
    return {"DataTransport": "WAN", "RendezvousReaderCount": "1", "QueueLimit": str(queue),
            "QueueFullPolicy": "Block", "OpenTimeoutSecs": str(int(SETUP_TIMEOUT))}


def sst_writer(path, rank, size, steps, queue, ready, go) -> None:
    import adios2.bindings as adios

    manager = adios.ADIOS()  # owns the IO and the engine: keep it alive until the end
    io = manager.DeclareIO(f"writer{rank}")
    io.SetEngine("SST")
    io.SetParameters(sst_parameters(queue))
    payload = stamped_payload(size)
    variable = io.DefineVariable("payload", payload, [payload.size], [0], [payload.size])
    engine = io.Open(path, adios.Mode.Write)  # returns once the reader has connected
    ready.set()
    go.wait(SETUP_TIMEOUT)
    for _ in range(steps):
        stamp(payload)
        engine.BeginStep()
        engine.Put(variable, payload, adios.Mode.Sync)
        engine.EndStep()
    engine.Close()


# --- consumers (this process) ---------------------------------------------------------------------

class Arrivals:
    """Arrival times and latencies of the steps received by the consumer."""

    def __init__(self, expected: int):
        self.expected = expected
        self.times: List[float] = []
        self.latencies: List[float] = []
        self.bytes = 0

    def add(self, sent_at: float, nbytes: int) -> None:
        now = time.monotonic()
        self.times.append(now)
        self.latencies.append(now - sent_at)
        self.bytes += nbytes

    def done(self) -> bool:
        return len(self.times) >= self.expected

    def record(self, path: str, producers: int, size: int, steps: int) -> Dict:
        # The rate runs from the first arrival to the last: process start-up is not counted.
        first_bytes = self.bytes / len(self.times)
        elapsed = max(self.times[-1] - self.times[0], 1e-9)
        return {"path": path, "producers": producers, "size_bytes": size,
                "bytes_per_s": (self.bytes - first_bytes) / elapsed,
                "p50_us": float(np.median(self.latencies) * 1e6), "steps": steps}


class Producers:
    """Producer processes started together, released at once, and always stopped."""

    def __init__(self, target: Callable, argument_lists: List[tuple]):
        context = multiprocessing.get_context("spawn")
        self.go = context.Event()
        self.ready = [context.Event() for _ in argument_lists]
        self.processes = [context.Process(target=target, args=(*arguments, ready, self.go),
                                          daemon=True)
                          for arguments, ready in zip(argument_lists, self.ready)]

    def start(self, index: Optional[int] = None) -> None:
        """Starts every producer, or only number ``index``."""
        for i, process in enumerate(self.processes):
            if index is None or i == index:
                process.start()

    def release(self, before_release: Optional[Callable[[], None]] = None) -> None:
        deadline = time.monotonic() + SETUP_TIMEOUT
        for ready in self.ready:
            while not ready.wait(0.1):
                self.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"handoff: producers not ready within {SETUP_TIMEOUT:g} s")
        if before_release:
            before_release()
        self.go.set()

    def check(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode not in (None, 0):
                raise RuntimeError(f"handoff: a producer process failed (exit code "
                                   f"{process.exitcode}); its traceback is above")

    def stop(self) -> None:
        for process in self.processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def wait_for(arrivals: Arrivals, producers: Producers, receive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CASE_TIMEOUT
    while not arrivals.done():
        if not receive():
            time.sleep(IDLE_PAUSE)  # leave the CPU to the producers and the server
            producers.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"handoff {what}: {len(arrivals.times)} of {arrivals.expected} "
                                   f"steps arrived within {CASE_TIMEOUT:g} s")


def measure_nekrs_ml(server, size: int, count: int, steps: int, args) -> Dict:
    from nekrs_ml import Client
    from nekrs_ml.train.data import SnapshotReader

    producers = Producers(nekrs_ml_producer, [
        (server["addresses"], server["password"], rank, size, steps, args.queue)
        for rank in range(count)])
    client = Client(server["addresses"], password=server["password"])
    try:
        producers.start()
        producers.release()
        reader = SnapshotReader(client, NAMESPACE, 0, 1)
        arrivals = Arrivals(count * steps)
        state = {"samples": 0, "busy": 0.0}

        def receive() -> bool:
            start = time.perf_counter()
            snapshots = reader.read_available()
            if snapshots:
                state["busy"] += time.perf_counter() - start
            for snapshot in snapshots:
                arrivals.add(snapshot.time, snapshot.inputs.nbytes + snapshot.targets.nbytes)
                state["samples"] += snapshot.inputs.shape[0]
            return bool(snapshots)

        wait_for(arrivals, producers, receive, "nekrs_ml")
        record = arrivals.record("nekrs_ml", count, size, steps)
        record["samples_per_s"] = record["bytes_per_s"] / 8  # [n, 1] + [n, 1] float32 per point
        record["reader_samples_per_s"] = state["samples"] / max(state["busy"], 1e-9)
        return record
    finally:
        producers.stop()
        client.close()


def measure_putget(server, size: int, count: int, steps: int, args) -> Dict:
    from nekrs_ml import _core
    from nekrs_ml.errors import KeyNotFoundError

    producers = Producers(putget_producer, [
        (server["addresses"], server["password"], rank, size, steps, args.queue)
        for rank in range(count)])
    client = _core.Client(server["addresses"], password=server["password"])
    try:
        producers.start()
        producers.release()
        arrivals = Arrivals(count * steps)
        next_step = [0] * count
        out = np.empty(max(size, 8), dtype=np.uint8)

        def receive() -> bool:
            got = False
            for rank in range(count):
                if next_step[rank] >= steps:
                    continue
                key = f"{NAMESPACE}:pg:{rank}:{next_step[rank]}"
                try:
                    client.get_tensor_into(key, out)
                except KeyNotFoundError:
                    continue
                arrivals.add(float(out[:8].view(np.float64)[0]), size)
                client.delete(key)
                next_step[rank] += 1
                got = True
            return got

        wait_for(arrivals, producers, receive, "putget")
        return arrivals.record("putget", count, size, steps)
    finally:
        producers.stop()
        client.close()


def wait_for_contact_file(path: str, producers: Producers) -> None:
    """Waits until the SST writer's contact file exists and has settled: the writer fills it in
    place, and a reader that opens a half-written one gives up ("writer exited")."""
    contact = path + ".sst"
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not os.path.exists(contact):
        producers.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"handoff adios2-sst: no contact file {contact} within "
                               f"{SETUP_TIMEOUT:g} s")
        time.sleep(0.01)
    time.sleep(0.2)


def open_sst_reader(manager, path: str, rank: int, queue: int):
    """An SST reader of the stream at ``path`` (its contact file is already there)."""
    import adios2.bindings as adios

    io = manager.DeclareIO(f"reader{rank}")
    io.SetEngine("SST")
    io.SetParameters(dict(sst_parameters(queue), OpenTimeoutSecs=str(READER_OPEN_TIMEOUT)))
    return io, io.Open(path, adios.Mode.Read)


def measure_sst_retrying(size: int, count: int, steps: int, args, log) -> Dict:
    """measure_sst, repeated when SST fails to connect: on a loaded host a reader's first contact
    with a writer fails now and then ("the writer exited before contact could be made")."""
    for attempt in range(1, SST_ATTEMPTS + 1):
        try:
            return measure_sst(size, count, steps, args)
        except RuntimeError as exc:
            if attempt == SST_ATTEMPTS:
                raise
            log(f"adios2-sst: attempt {attempt} failed ({str(exc).strip()[:200]}); retrying")


def measure_sst(size: int, count: int, steps: int, args) -> Dict:
    import adios2.bindings as adios

    directory = tempfile.mkdtemp(prefix="nkml-sst-", dir="/tmp")
    paths = [os.path.join(directory, f"stream{rank}") for rank in range(count)]
    producers = Producers(sst_writer, [(paths[rank], rank, size, steps, args.queue)
                                       for rank in range(count)])
    engines = []
    try:
        manager = adios.ADIOS()
        readers = []
        # One writer at a time, each met by its reader at once: a writer left waiting for its
        # reader while others connect is often not reachable any more ("the writer exited
        # before contact could be made").
        for rank, path in enumerate(paths):
            producers.start(rank)
            wait_for_contact_file(path, producers)
            io, engine = open_sst_reader(manager, path, rank, args.queue)
            engines.append(engine)
            readers.append(io)
        producers.release()
        arrivals = Arrivals(count * steps)
        out = np.empty(max(size, 8), dtype=np.uint8)
        received = [0] * count

        def receive() -> bool:
            got = False
            for rank, engine in enumerate(engines):
                if received[rank] >= steps:
                    continue
                status = engine.BeginStep(adios.StepMode.Read, 0.0)
                if status == adios.StepStatus.NotReady:
                    continue
                if status != adios.StepStatus.OK:
                    raise RuntimeError(f"handoff adios2-sst: stream {rank} ended after "
                                       f"{received[rank]} of {steps} steps ({status})")
                engine.Get(readers[rank].InquireVariable("payload"), out, adios.Mode.Sync)
                engine.EndStep()
                arrivals.add(float(out[:8].view(np.float64)[0]), size)
                received[rank] += 1
                got = True
            return got

        wait_for(arrivals, producers, receive, "adios2-sst")
        return arrivals.record("adios2-sst", count, size, steps)
    finally:
        for engine in engines:
            try:
                engine.Close()
            except Exception:  # a writer that failed already closed its side
                pass
        producers.stop()
        shutil.rmtree(directory, ignore_errors=True)


def adios2_available() -> bool:
    try:
        import adios2.bindings  # noqa: F401
    except ImportError:
        return False
    return True


def run(args, log) -> List[Dict]:
    from nekrs_ml.orchestrator import Orchestrator

    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"--paths: unknown {', '.join(unknown)}; valid: {', '.join(PATHS)}")
    if "adios2-sst" in paths and not adios2_available():
        log("adios2 is not installed (pip install adios2): the adios2-sst path is skipped")
        paths.remove("adios2-sst")
    run_dir = tempfile.mkdtemp(prefix="nkml-bench-", dir="/tmp")
    orch = Orchestrator(run_dir, transport=args.transport, maxmemory="4gb")
    records: List[Dict] = []
    # SIGTERM (e.g. from `timeout`) unwinds like an error, so the server and producers stop
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        info = orch.start()
        server = {"addresses": info["addresses"], "password": orch.password}
        for size in args.sizes:
            for count in args.producers:
                steps = steps_for(size, count, args)
                for path in paths:
                    log(f"{path}: {count} -> 1, {size} B x {steps} steps per producer")
                    if path == "nekrs_ml":
                        records.append(measure_nekrs_ml(server, size, count, steps, args))
                    elif path == "putget":
                        records.append(measure_putget(server, size, count, steps, args))
                    else:
                        records.append(measure_sst_retrying(size, count, steps, args, log))
    finally:
        orch.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    return records


def print_table(records: List[Dict]) -> None:
    sst = {(r["producers"], r["size_bytes"]): r["bytes_per_s"]
           for r in records if r["path"] == "adios2-sst"}
    print(f"{'path':10} {'prod':>4} {'size':>9} {'MiB/s':>9} {'p50 us':>9} {'vs SST':>7} "
          f"{'ingest Msamples/s':>18}")
    for r in sorted(records, key=lambda r: (r["size_bytes"], r["producers"], r["path"])):
        ratio = r["bytes_per_s"] / sst.get((r["producers"], r["size_bytes"]), float("nan"))
        ingest = f"{r['reader_samples_per_s'] / 1e6:18.1f}" if "reader_samples_per_s" in r else ""
        print(f"{r['path']:10} {r['producers']:>4} {r['size_bytes']:>9} "
              f"{r['bytes_per_s'] / 2**20:9.1f} {r['p50_us']:9.0f} {ratio:6.0%} {ingest}")
