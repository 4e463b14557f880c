"""Inference call latency through a model worker, beside an in-process forward and bare round trips.

For each model (mlp_1_20_1: 1->20->1, mlp_3_64_64_2: 3->64->64->2), each device and 1, 2, 4, 8
concurrent ranks (separate processes, started once), every rank makes ``--calls`` calls of
``--points`` wall points each, all ranks starting together:
  worker     - nekrs_ml::InferenceClient::run through a `nekrs-ml serve` worker on the device;
  inprocess  - the same TorchScript model evaluated in the rank's own process on the device
               (the floor: no database, no batching);
  roundtrip  - the bare round trips of the same payload: put of the inputs, get of an
               outputs-sized tensor (C++ client).
The target is worker p50 <= 3 x (inprocess p50 + roundtrip p50) at the same rank count.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

NAMESPACE = "bench"
MODELS = {"mlp_1_20_1": (1, [20], 1), "mlp_3_64_64_2": (3, [64, 64], 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=25000, help="wall points per call")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per rank")
    parser.add_argument("--ranks", default="1,2,4,8", help="concurrent rank counts")
    parser.add_argument("--models", default=",".join(MODELS), help="models to measure")
    parser.add_argument("--devices", default="auto",
                        help="worker devices, e.g. cpu,cuda:0 (auto: cpu, plus cuda:0 if present)")
    parser.add_argument("--transport", choices=("tcp", "unix"), default="unix")
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="torch CPU threads of the worker (0: torch's default)")
    parser.add_argument("--rank-threads", type=int, default=1,
                        help="torch CPU threads of each in-process rank (one core per rank, as "
                             "solver ranks have)")
    parser.add_argument("--max-wait-ms", type=float, default=0.5, help="worker batching wait")


def build_model(n_in: int, hidden: List[int], n_out: int):
    import torch

    torch.manual_seed(0)
    layers, width = [], n_in
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.SiLU()]
        width = size
    layers.append(torch.nn.Linear(width, n_out))
    module = torch.jit.script(torch.nn.Sequential(*layers).eval())
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


# --- rank processes ------------------------------------------------------------------------------
def _rank_main(rank: int, addresses, password: str, threads: int, conn) -> None:
    """Serves measurement commands from the controller until told to stop."""
    import torch

    from .. import _core

    if threads:
        torch.set_num_threads(threads)
    client = _core.Client(addresses, password=password)
    inference = _core.InferenceClient(client, NAMESPACE, rank, 1, 60.0)
    modules: Dict[str, object] = {}
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        try:
            conn.send(_measure(rank, client, inference, modules, *command[1:]))
        except Exception as exc:  # reported by the controller
            conn.send(f"rank {rank}: {type(exc).__name__}: {exc}")
    client.close()


def _measure(rank, client, inference, modules, path, model, n_in, n_out, points, calls, device,
             blob, start_at):
    """Per-call seconds of `calls` timed calls of one path, and their total wall time."""
    import torch

    rng = np.random.default_rng(rank)
    inputs = rng.uniform(0.5, 1.5, (points, n_in)).astype(np.float32)
    out = np.empty((points, n_out), np.float32)
    if path == "worker":
        def call():
            inference.run(model, inputs, out)
    elif path == "roundtrip":
        in_key, out_key = f"{NAMESPACE}:{{r{rank}}}:rt:in", f"{NAMESPACE}:{{r{rank}}}:rt:out"
        client.put_tensor(out_key, out)

        def call():
            client.put_tensor(in_key, inputs)
            client.get_tensor_into(out_key, out)
    else:
        key = f"{model}@{device}"
        if key not in modules:
            modules[key] = torch.jit.load(io.BytesIO(blob), map_location=device)
        module, torch_device = modules[key], torch.device(device)

        def call():
            with torch.inference_mode():
                result = module(torch.from_numpy(inputs).to(torch_device))
                out[...] = result.to("cpu").numpy()
    for _ in range(5):
        call()
    time.sleep(max(0.0, start_at - time.time()))
    seconds, began = [], time.perf_counter()
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds, time.perf_counter() - began


class Ranks:
    """Up to N persistent rank processes (spawned once: importing torch is slow)."""

    def __init__(self, count: int, addresses, password: str, threads: int):
        context = mp.get_context("spawn")
        self.pipes, self.processes = [], []
        for rank in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_rank_main, args=(rank, addresses, password, threads, child),
                                      daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def measure(self, ranks: int, *args) -> Dict:
        start_at = time.time() + 1.0 + 0.3 * ranks  # after every rank's warm-up
        for pipe in self.pipes[:ranks]:
            pipe.send(("run",) + args + (start_at,))
        results = []
        for pipe in self.pipes[:ranks]:
            if not pipe.poll(600):
                raise RuntimeError("a benchmark rank did not answer within 600 s")
            result = pipe.recv()
            if isinstance(result, str):
                raise RuntimeError(f"bench inference: {result}")
            results.append(result)
        seconds = np.array([s for per_rank, _ in results for s in per_rank])
        wall = max(elapsed for _, elapsed in results)
        return {"p50_us": float(np.median(seconds) * 1e6),
                "p99_us": float(np.percentile(seconds, 99) * 1e6),
                "calls_per_s": float(seconds.size / wall)}

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def _devices(text: str) -> List[str]:
    if text != "auto":
        return [d for d in text.split(",") if d]
    import torch

    return ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])


def run(args, log) -> List[Dict]:
    from .. import Client, keys
    from ..orchestrator import Orchestrator
    from ..serve.deploy import deploy

    rank_counts = [int(k) for k in args.ranks.split(",") if k]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench inference: unknown model(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(MODELS)}")
    run_dir = tempfile.mkdtemp(prefix="nkml-bench-", dir="/tmp")
    orch = Orchestrator(run_dir, transport=args.transport, maxmemory="4gb", namespace=NAMESPACE)
    records: List[Dict] = []
    ranks = worker = None
    try:
        info = orch.start()
        env = dict(os.environ, **info["env"])
        client = Client(info["addresses"], password=orch.password)
        blobs = {}
        for name in models:
            blobs[name] = build_model(*MODELS[name])
            model_file = os.path.join(run_dir, f"{name}.pt")
            with open(model_file, "wb") as handle:
                handle.write(blobs[name])
            deploy(client, NAMESPACE, name, model_file)
        ranks = Ranks(max(rank_counts), info["addresses"], orch.password, args.rank_threads)
        for device in _devices(args.devices):
            log(f"worker on {device}")
            worker = subprocess.Popen(
                [sys.executable, "-m", "nekrs_ml.cli", "serve", "--namespace", NAMESPACE,
                 "--device", device, "--max-batch", "64", "--max-wait-ms", str(args.max_wait_ms)]
                + (["--threads", str(args.worker_threads)] if args.worker_threads else []),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while not client.exists(keys.worker_heartbeat(NAMESPACE, 0)):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench inference: the worker on {device} did not start")
                time.sleep(0.1)
            for name in models:
                n_in, _, n_out = MODELS[name]
                for k in rank_counts:
                    for path in ("inprocess", "roundtrip", "worker"):
                        if path == "roundtrip" and device != "cpu":
                            continue  # independent of the device: measured once
                        log(f"  {name} {path} ranks={k}")
                        result = ranks.measure(k, path, name, n_in, n_out, args.points, args.calls,
                                               device, blobs[name])
                        records.append({"model": name, "path": path, "ranks": k,
                                        "device": "host" if path == "roundtrip" else device,
                                        **result})
            worker.terminate()
            worker.wait(timeout=30)
            worker = None
        if log is not print:  # --json: the table (with these lines) is not printed
            for line in target_check(records):
                log(line)
        return records
    finally:
        if ranks is not None:
            ranks.close()
        if worker is not None:
            worker.kill()
            worker.wait()
        orch.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def target_check(records: List[Dict]) -> List[str]:
    """One line per worker record: p50 against 3 x (inprocess + roundtrip) p50."""
    by = {(r["model"], r["path"], r["ranks"], r["device"]): r for r in records}
    lines = []
    for r in records:
        if r["path"] != "worker":
            continue
        floor = by.get((r["model"], "inprocess", r["ranks"], r["device"]))
        trip = by.get((r["model"], "roundtrip", r["ranks"], "host"))
        if floor and trip:
            target = 3 * (floor["p50_us"] + trip["p50_us"])
            lines.append(f"{r['model']:14} {r['device']:7} ranks={r['ranks']}: worker p50 "
                         f"{r['p50_us']:9.0f} us, target {target:9.0f} us -> "
                         f"{'ok' if r['p50_us'] <= target else 'MISSED'} "
                         f"({r['p50_us'] / target:.2f} of the target)")
    return lines


def print_table(records: List[Dict]) -> None:
    for r in records:
        print(f"{r['model']:14} {r['path']:9} {r['device']:7} ranks={r['ranks']}  "
              f"p50 {r['p50_us']:9.0f} us  p99 {r['p99_us']:9.0f} us  {r['calls_per_s']:8.1f} calls/s")
    for line in target_check(records):
        print(line)
