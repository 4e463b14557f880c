"""Solver-side cost of one training snapshot beside a bare put of the same bytes; trainer ingest.

Per transport (own server, started and stopped here): the C++ TrainingStream puts snapshots of
``--points`` wall points ([n, 1] inputs + [n, 1] targets) as a solver rank does, (a) below its
retention limit, (b) with the trainer's reader consuming between puts, alternating with a bare
put consumed the same way (the fair baseline of the steady state), and (c) at the limit, where
each put also drops the oldest snapshot; the baseline of (a) and (c) is one C++ put_tensor of
the same number of bytes to one key, back to back. Then the trainer's reader consumes
the stored snapshots and its rate in samples/s is reported. Each snapshot record carries its
p50 over the bare put's (``vs_bare_p50``) and the reference system's send time
(``seed_polaris_us``: SmartRedis + Redis on Polaris, co-located, Balin et al. 2023).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

from .. import Client, _core
from ..orchestrator import Orchestrator
from ..train.data import SnapshotReader
from .harness import WARMUP_CALLS, latency_us, time_calls
from .scaling import POLARIS_SEED, machine_now

NAMESPACE = "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=25000, help="wall points per rank")
    parser.add_argument("--puts", type=int, default=300, help="snapshots per measurement")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--transports", default="tcp,unix", help="tcp, unix or both")


def latency_record(transport: str, op: str, points: int, nbytes: int, seconds: List[float]) -> Dict:
    return {"transport": transport, "op": op, "points": points, "bytes": nbytes,
            **latency_us(seconds)}


def calls(fn, count: int, between=None) -> List[float]:
    """Seconds of each of ``count`` timed calls of ``fn`` (``between`` not timed)."""
    return time_calls(fn, count, between=between)[0]


def alternating_calls(first, after_first, second, after_second,
                      count: int) -> Tuple[List[float], List[float]]:
    """Seconds of ``count`` calls each of ``first`` and ``second``, alternating, so that the
    machine's drift hits both alike; each is followed by its own untimed work."""
    first_s: List[float] = []
    second_s: List[float] = []
    for index in range(WARMUP_CALLS + count):
        began = time.perf_counter()
        first()
        took_first = time.perf_counter() - began
        after_first()
        began = time.perf_counter()
        second()
        took_second = time.perf_counter() - began
        after_second()
        if index >= WARMUP_CALLS:
            first_s.append(took_first)
            second_s.append(took_second)
    return first_s, second_s


def measure(transport: str, args, log) -> List[Dict]:
    run_dir = tempfile.mkdtemp(prefix="nkml-bench-", dir="/tmp")
    orch = Orchestrator(run_dir, transport=transport, maxmemory="4gb")
    try:
        info = orch.start()
        cpp = _core.Client(info["addresses"], password=orch.password)
        inputs = np.random.default_rng(0).uniform(0.6, 1.1, (args.points, 1)).astype(args.dtype)
        targets = (inputs ** 2 * 3e-3).astype(args.dtype)
        nbytes = inputs.nbytes + targets.nbytes
        records = []

        log(f"{transport}: bare put of {nbytes} bytes")
        same_bytes = np.zeros(nbytes, dtype=np.uint8)
        records.append(latency_record(transport, "bare_put", args.points, nbytes,
                                      calls(lambda: cpp.put_tensor("bench:bare", same_bytes), args.puts)))
        cpp.delete("bench:bare")

        log(f"{transport}: snapshot puts below the retention limit")
        stream = _core.TrainingStream(cpp, NAMESPACE, 0, 1, args.puts + 10, "drop", 60.0)
        step = iter(range(1, 10**9))
        records.append(latency_record(transport, "snapshot_put", args.points, nbytes, calls(
            lambda: stream.put(next(step), 0.0, inputs, targets), args.puts)))

        log(f"{transport}: trainer ingest of the stored snapshots")
        reader = SnapshotReader(Client(info["addresses"], password=orch.password), NAMESPACE, 0, 1)
        start = time.perf_counter()
        snapshots = samples = 0
        while True:
            batch = reader.read_available()
            if not batch:
                break
            snapshots += len(batch)
            samples += sum(s.inputs.shape[0] for s in batch)
        elapsed = time.perf_counter() - start
        records.append({"transport": transport, "op": "trainer_ingest", "points": args.points,
                        "snapshots": snapshots, "samples_per_s": samples / elapsed,
                        "bytes_per_s": snapshots * nbytes / elapsed})

        log(f"{transport}: snapshot puts with the trainer consuming between them, alternating "
            "with bare puts that a reader consumes the same way")
        # The steady state of a run: the server reuses the memory the trainer frees. The bare
        # put beside it gets the same treatment (a new key each call, read into a new array and
        # deleted by the Python client between calls, untimed): a put that follows other work on
        # the client and the server costs more than one that follows itself (caches, the
        # server's reuse of the block it just freed), so the back-to-back bare put above is not
        # the fair baseline of a consumed snapshot.
        consumed = _core.TrainingStream(cpp, NAMESPACE, 2, 1, 20, "drop", 60.0)
        reader_of_rank = SnapshotReader(Client(info["addresses"], password=orch.password),
                                        NAMESPACE, 0, 1)
        bare_reader = Client(info["addresses"], password=orch.password)
        bare_keys = (f"bench:bare:{i}" for i in range(10**9))
        key = [""]

        def bare_put() -> None:
            key[0] = next(bare_keys)
            cpp.put_tensor(key[0], same_bytes)

        def consume_bare() -> None:
            bare_reader.get_tensors([key[0]])
            bare_reader.pipeline([("DEL", key[0])])

        snapshot_s, bare_s = alternating_calls(
            lambda: consumed.put(next(step), 0.0, inputs, targets), reader_of_rank.read_available,
            bare_put, consume_bare, args.puts)
        record = latency_record(transport, "snapshot_put_consumed", args.points, nbytes, snapshot_s)
        record["bare_put_consumed"] = latency_us(bare_s)
        bare_p50 = record["bare_put_consumed"]["p50_us"]
        record["vs_bare_put_consumed_p50"] = record["p50_us"] / bare_p50
        records.append(record)

        log(f"{transport}: snapshot puts at the retention limit (each drops the oldest)")
        full = _core.TrainingStream(cpp, NAMESPACE, 1, 1, 20, "drop", 60.0)
        records.append(latency_record(transport, "snapshot_put_dropping", args.points, nbytes, calls(
            lambda: full.put(next(step), 0.0, inputs, targets), args.puts)))
        return records
    finally:
        orch.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def run(args, log) -> List[Dict]:
    records: List[Dict] = []
    for transport in [t for t in args.transports.split(",") if t]:
        measured = measure(transport, args, log)
        measured_on = machine_now()  # with the load average of the minutes just measured
        bare = next(r["p50_us"] for r in measured if r["op"] == "bare_put")
        for record in measured:
            record["machine"] = measured_on
            if record["op"].startswith("snapshot_put"):
                record["vs_bare_p50"] = record["p50_us"] / bare
                record["seed_polaris_us"] = POLARIS_SEED["colocated"]["snapshot_put"]
        records += measured
    return records


def print_table(records: List[Dict]) -> None:
    for r in records:
        if r["op"] == "trainer_ingest":
            print(f"{r['transport']:5} {r['op']:22} {r['samples_per_s'] / 1e6:8.2f} M samples/s "
                  f"({r['snapshots']} snapshots)")
        else:
            beside = (f"  {r['vs_bare_p50']:.2f} x bare  seed (Polaris) "
                      f"{r['seed_polaris_us']:.0f} us" if "vs_bare_p50" in r else "")
            if "bare_put_consumed" in r:
                beside += (f"\n{'':5} {'  beside: bare_put_consumed':22} {r['bytes']:>9} B  p50 "
                           f"{r['bare_put_consumed']['p50_us']:.0f} us  p99 "
                           f"{r['bare_put_consumed']['p99_us']:.0f} us  snapshot / it "
                           f"{r['vs_bare_put_consumed_p50']:.2f}")
            print(f"{r['transport']:5} {r['op']:22} {r['bytes']:>9} B  p50 {r['p50_us']:.0f} us  "
                  f"p99 {r['p99_us']:.0f} us{beside}")
    print(f"seed: {POLARIS_SEED['colocated']['note']}")
