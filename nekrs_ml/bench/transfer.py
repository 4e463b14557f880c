"""put/get throughput of the C++ and Python clients beside redis-benchmark, TCP and Unix socket.

Each transport gets its own server (started here, stopped at the end). For every payload size,
the C++ client (nekrs_ml._core), the Python client and redis-benchmark SET/GET move the same
number of bytes per value, one connection, one request in flight.

Rounds interleave the three, each round in another order. A record holds the best round's
throughput and, for the clients, ``vs_redis_benchmark``: the median over the rounds of the
client's throughput over redis-benchmark's in the same round. On a shared machine whose speed
drifts by more than the difference being measured, that paired ratio is the comparison; best
rounds taken apart compare two lucky moments.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import tempfile
from typing import Callable, Dict, List

import numpy as np

from .. import Client, _core
from ..orchestrator import Orchestrator
from .harness import time_calls

DEFAULT_SIZES = (4 * 1024, 100 * 1024, 1024 * 1024, 16 * 1024 * 1024)
TRANSPORTS = ("tcp", "unix")
BASELINE = "redis-benchmark"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(DEFAULT_SIZES), help="payload sizes in bytes, comma-separated")
    parser.add_argument("--bytes-per-case", type=int, default=128 * 1024 * 1024,
                        help="bytes to move per (client, op, size); sets the repetitions")
    parser.add_argument("--transports", default="tcp,unix", help="tcp, unix or both")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds over the three clients, each in another order; the ratios "
                             "to redis-benchmark are the medians of the rounds'")
    parser.add_argument("--redis-benchmark", default=shutil.which("redis-benchmark") or "redis-benchmark")


def repetitions(size: int, budget: int) -> int:
    return int(min(5000, max(20, budget // size)))


def timed(fn: Callable[[], None], count: int) -> float:
    """Wall seconds of ``count`` calls after the warm-up."""
    return time_calls(fn, count)[1]


def client_records(name: str, client, transport: str, size: int, count: int) -> List[Dict]:
    payload = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8)
    out = np.empty_like(payload)
    key = f"bench:{name}:{size}"
    get = (lambda: client.get_tensor_into(key, out)) if name == "cpp" else (lambda: client.get_tensor(key))
    put_s = timed(lambda: client.put_tensor(key, payload), count)
    get_s = timed(get, count)
    client.delete(key)
    return [record(name, transport, "put", size, count, put_s),
            record(name, transport, "get", size, count, get_s)]


def record(client: str, transport: str, op: str, size: int, count: int, seconds: float) -> Dict:
    return {"client": client, "transport": transport, "op": op, "size_bytes": size,
            "bytes_per_s": size * count / seconds}


def summarize(rounds: List[List[Dict]]) -> List[Dict]:
    """One record per client and op: the best round's throughput, plus for the clients the
    median of their per-round ratios to redis-benchmark (``vs_redis_benchmark``)."""
    best: Dict[tuple, Dict] = {}
    ratios: Dict[tuple, List[float]] = {}
    for records in rounds:
        baseline = {r["op"]: r["bytes_per_s"] for r in records if r["client"] == BASELINE}
        for r in records:
            key = (r["client"], r["transport"], r["op"], r["size_bytes"])
            if key not in best or r["bytes_per_s"] > best[key]["bytes_per_s"]:
                best[key] = dict(r)
            if r["client"] != BASELINE and baseline.get(r["op"]):
                ratios.setdefault(key, []).append(r["bytes_per_s"] / baseline[r["op"]])
    for key, values in ratios.items():
        best[key]["vs_redis_benchmark"] = float(np.median(values))
        best[key]["rounds_vs_redis_benchmark"] = values
    return list(best.values())


def redis_benchmark_records(binary: str, server: Dict, password: str, transport: str,
                            size: int, count: int) -> List[Dict]:
    target = (["-s", server["address"][5:]] if transport == "unix"
              else ["-h", server["address"].rsplit(":", 1)[0], "-p", server["address"].rsplit(":", 1)[1]])
    cmd = [binary, *target, "-a", password, "-t", "set,get", "-d", str(size), "-n", str(count),
           "-c", "1", "-P", "1", "--csv"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {proc.stderr.strip()}")
    rows = [r for r in csv.DictReader(io.StringIO(proc.stdout)) if r.get("test") in ("SET", "GET")]
    return [{"client": BASELINE, "transport": transport,
             "op": "put" if row["test"] == "SET" else "get", "size_bytes": size,
             "bytes_per_s": float(row["rps"]) * size} for row in rows]


def run(args, log) -> List[Dict]:
    records: List[Dict] = []
    transports = [t for t in args.transports.split(",") if t]
    for transport in transports:
        run_dir = tempfile.mkdtemp(prefix="nkml-bench-", dir="/tmp")
        orch = Orchestrator(run_dir, transport=transport, maxmemory="4gb")
        try:
            info = orch.start()
            password = orch.password
            clients = {"cpp": _core.Client(info["addresses"], password=password),
                       "python": Client(info["addresses"], password=password)}
            for size in args.sizes:
                count = repetitions(size, args.bytes_per_case)
                log(f"{transport} {size} B x {count}, {args.repeats} rounds")
                measures = [
                    lambda: client_records("cpp", clients["cpp"], transport, size, count),
                    lambda: client_records("python", clients["python"], transport, size, count),
                    lambda: redis_benchmark_records(args.redis_benchmark, info["servers"][0],
                                                    password, transport, size, count)]
                rounds: List[List[Dict]] = []
                for turn in range(max(1, args.repeats)):
                    # each round in another order: none of the three always follows another
                    order = measures[turn % 3:] + measures[:turn % 3]
                    rounds.append([r for measure in order for r in measure()])
                records += summarize(rounds)
        finally:
            orch.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    return records


def print_table(records: List[Dict]) -> None:
    print(f"{'transport':9} {'op':4} {'size':>9} {'client':15} {'best MB/s':>9} "
          f"{'vs redis-benchmark (median of rounds)':>37}")
    for r in sorted(records, key=lambda r: (r["transport"], r["op"], r["size_bytes"], r["client"])):
        ratio = r.get("vs_redis_benchmark")
        print(f"{r['transport']:9} {r['op']:4} {r['size_bytes']:>9} {r['client']:15} "
              f"{r['bytes_per_s'] / 1e6:9.1f} {'' if ratio is None else f'{ratio:.0%}':>37}")
