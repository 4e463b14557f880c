"""Inference call latency through a model worker and in the rank's process, beside a bare torch
forward and bare round trips.

For each model (mlp_1_20_1: 1->20->1, mlp_3_64_64_2: 3->64->64->2; NAME_onnx: the same model as
ONNX, served by ONNX Runtime, with ONNX Runtime as its forward), each device and 1, 2, 4, 8
concurrent ranks (separate processes, started once), every rank makes ``--calls`` calls of
``--points`` wall points each, all ranks starting together:
  worker        - nekrs_ml::InferenceClient::run through a `nekrs-ml serve` worker on the device;
  inprocess-cpp - the in-process backend (libnekrsml_torch: the model's AOTInductor package, C++,
                  no Python in the call) in the rank's own process on the device;
  forward       - the same torch.export model's forward in Python in the rank's process (the bare
                  torch forward: no database, no batching);
  roundtrip     - the bare round trips of the same payload: put of the inputs, get of an
                  outputs-sized tensor (C++ client);
  redisai       - with --redisai ADDRESS: the same model (TorchScript, same weights) in a RedisAI
                  server started by the user, called as a SmartRedis program calls it
                  (put_tensor + run_model + get_tensor) by --smartredis-python processes.
Targets: worker p50 <= 3 x (forward p50 + roundtrip p50); inprocess-cpp p50 <= 1.2 x forward p50,
at the same rank count. ``swap`` records the in-process backend's weight swap (a new version of
the same graph) per version, in one rank.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

from . import backend_models
from .harness import latency_us, time_calls

NAMESPACE = "bench"
MODELS = {"mlp_1_20_1": (1, [20], 1), "mlp_3_64_64_2": (3, [64, 64], 2)}
DEFAULT_MODELS = tuple(MODELS)
MODELS.update(backend_models.forms(MODELS))  # NAME_onnx: served by ONNX Runtime
PATHS = ("forward", "inprocess-cpp", "roundtrip", "worker", "redisai")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=25000, help="wall points per call")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per rank")
    parser.add_argument("--ranks", default="1,2,4,8", help="concurrent rank counts")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"models to measure, of {', '.join(MODELS)} (NAME_onnx: the same "
                             "model as ONNX, served by ONNX Runtime, which is also its forward)")
    parser.add_argument("--devices", default="auto",
                        help="worker devices, e.g. cpu,cuda:0 (auto: cpu, plus cuda:0 if present)")
    parser.add_argument("--transport", choices=("tcp", "unix"), default="unix")
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="torch CPU threads of the worker (0: torch's default)")
    parser.add_argument("--rank-threads", type=int, default=1,
                        help="torch CPU threads of each in-process rank (one core per rank, as "
                             "solver ranks have)")
    parser.add_argument("--max-wait-ms", type=float, default=0.5, help="worker batching wait")
    parser.add_argument("--swaps", type=int, default=20,
                        help="weight swaps timed per model and device (in-process backend)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds per model and rank count, the paths alternating; each "
                             "figure is the median over the rounds")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="paths to measure (redisai only with --redisai)")
    parser.add_argument("--redisai", metavar="ADDRESS",
                        help="a RedisAI server to measure beside the worker (CPU), e.g. "
                             "unix:///tmp/redisai.sock (SmartRedis's address form)")
    parser.add_argument("--smartredis-python", metavar="PYTHON",
                        help="a Python with smartredis installed, for --redisai")


def build_model(n_in: int, hidden: List[int], n_out: int, torchscript: bool = False) -> bytes:
    """The benchmark's MLP (SiLU, fixed seed): its torch.export program, or the same weights as
    TorchScript (what RedisAI runs)."""
    import torch

    module = backend_models.mlp(n_in, hidden, n_out)
    buffer = io.BytesIO()
    if torchscript:
        torch.jit.save(torch.jit.script(module), buffer)
    else:
        torch.export.save(torch.export.export(module, (torch.zeros(8, n_in),),
                                              dynamic_shapes=({0: torch.export.Dim("points")},)),
                          buffer)
    return buffer.getvalue()


def latency_record(results) -> Dict:
    """p50 and p99 over every call of every rank, and calls per second of the slowest rank's
    wall time, from each rank's (seconds per call, wall seconds)."""
    seconds = [s for per_rank, _ in results for s in per_rank]
    wall = max(elapsed for _, elapsed in results)
    return {**latency_us(seconds), "calls_per_s": float(len(seconds) / wall)}


class RedisAI:
    """The RedisAI path: SmartRedis clients (separate processes of `python`) calling a model
    stored in the RedisAI server at `address`."""

    CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "redisai_client.py")

    def __init__(self, address: str, python: str):
        self.address, self.python = address, python

    def _run(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([self.python, self.CLIENT, self.address, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def set_model(self, key: str, path: str) -> None:
        proc = self._run("set-model", key, path)
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"bench inference: storing {key} in RedisAI at {self.address} "
                             f"failed: {err.strip()[-600:]}")

    def measure(self, ranks: int, key: str, n_in: int, n_out: int, points: int,
                calls: int) -> Dict:
        start_at = time.time() + 3.0 + 0.5 * ranks  # after every client's start and warm-up
        procs = [self._run("measure", str(rank), key, str(n_in), str(n_out), str(points),
                           str(calls), repr(start_at)) for rank in range(ranks)]
        results = []
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=600)
                if proc.returncode != 0:
                    raise SystemExit(f"bench inference: a RedisAI client failed: "
                                     f"{err.strip()[-600:]}")
                result = json.loads(out.strip().splitlines()[-1])
                results.append((result["seconds"], result["wall"]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return latency_record(results)


# --- rank processes ------------------------------------------------------------------------------
def _rank_main(rank: int, addresses, password: str, threads: int, conn) -> None:
    """Serves measurement commands from the controller until told to stop."""
    import torch

    from .. import _core

    if threads:
        torch.set_num_threads(threads)
    client = _core.Client(addresses, password=password)
    inference = _core.InferenceClient(client, NAMESPACE, rank, 1, 60.0)
    modules: Dict[str, object] = {}  # Python forwards and in-process backends by model@device
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        try:
            if command[0] == "swap":
                conn.send(_swap(client, modules, *command[1:]))
                continue
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
    elif path == "inprocess-cpp":
        backend = _backend(client, modules, device)

        def call():
            backend.run(model, inputs, out)
    elif backend_models.is_onnx(model):  # the bare ONNX Runtime run in the rank's process
        run_onnx = backend_models.onnx_forward(modules, model, device, blob)

        def call():
            out[...] = run_onnx(inputs)
    else:
        key = f"{model}@{device}"
        if key not in modules:
            from torch.export.passes import move_to_device_pass

            from ..models import aot

            program = aot.load_program(blob, f"model {model!r}")
            modules[key] = move_to_device_pass(program, torch.device(device)).module()
        module, torch_device = modules[key], torch.device(device)

        def call():
            with torch.inference_mode():
                result = module(torch.from_numpy(inputs).to(torch_device))
                out[...] = result.to("cpu").numpy()
    return time_calls(call, calls, start_at)


def _backend(client, modules, device):
    """This rank's in-process backend on ``device`` (one per process and device)."""
    import torch

    from .. import _core

    key = f"backend@{device}"
    if key not in modules:
        threads = max(1, torch.get_num_threads())  # the rank's own setting (--rank-threads)
        modules[key] = _core.InprocessBackend(client, NAMESPACE, device=device, threads=threads,
                                              reload_interval=3600.0)
    return modules[key]


def _swap(client, modules, model, device):
    """Takes the newest version of ``model`` now; the seconds of that weight swap."""
    backend = _backend(client, modules, device)
    backend.refresh(model)
    return backend.last_swap_seconds


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
        return latency_record(results)

    def swap(self, model: str, device: str) -> float:
        self.pipes[0].send(("swap", model, device))
        if not self.pipes[0].poll(120):
            raise RuntimeError("a benchmark rank did not answer within 120 s")
        result = self.pipes[0].recv()
        if isinstance(result, str):
            raise RuntimeError(f"bench inference: {result}")
        return result

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
    from ..models import aot
    from ..orchestrator import Orchestrator
    from ..models.deploy import deploy

    rank_counts = [int(k) for k in args.ranks.split(",") if k]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"bench inference: unknown model(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(MODELS)}")
    paths = [p for p in args.paths.split(",") if p]
    if set(paths) - set(PATHS):
        raise SystemExit(f"bench inference: unknown path(s) {', '.join(set(paths) - set(PATHS))}; "
                         f"choose from {', '.join(PATHS)}")
    if args.rounds < 1:
        raise SystemExit("bench inference: --rounds must be at least 1")
    redisai = None
    if args.redisai:
        if not args.smartredis_python:
            raise SystemExit("bench inference: --redisai needs --smartredis-python PYTHON (a "
                             "Python with smartredis installed)")
        redisai = RedisAI(args.redisai, args.smartredis_python)
    else:
        paths = [p for p in paths if p != "redisai"]
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
            onnx = backend_models.is_onnx(name)
            blobs[name] = (backend_models.onnx_blob if onnx else build_model)(*MODELS[name])
            model_file = os.path.join(run_dir, name + backend_models.suffix(name))
            with open(model_file, "wb") as handle:
                handle.write(blobs[name])
            deploy(client, NAMESPACE, name, model_file)
            if redisai is not None and not onnx:
                script_file = os.path.join(run_dir, f"{name}.torchscript.pt")
                with open(script_file, "wb") as handle:
                    handle.write(build_model(*MODELS[name], torchscript=True))
                redisai.set_model(f"bench_{name}", script_file)
        ranks = Ranks(max(rank_counts), info["addresses"], orch.password, args.rank_threads)
        for device in _devices(args.devices):
            for name in models:
                if "inprocess-cpp" in paths and not backend_models.is_onnx(name):
                    log(f"compiling {name} for {device}")
                    aot.ensure_package(client, NAMESPACE, name, device=device)
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
                    rounds: Dict[str, List[Dict]] = {}
                    for turn in range(args.rounds):  # the paths alternate, round after round
                        for path in paths:
                            if path in ("roundtrip", "redisai") and device != "cpu":
                                continue  # independent of the device / CPU only: measured once
                            if path in ("inprocess-cpp", "redisai") and \
                                    backend_models.is_onnx(name):
                                continue  # torch-export / TorchScript only
                            log(f"  {name} {path} ranks={k} round {turn + 1}/{args.rounds}")
                            if path == "redisai":
                                result = redisai.measure(k, f"bench_{name}", n_in, n_out,
                                                         args.points, args.calls)
                            else:
                                result = ranks.measure(k, path, name, n_in, n_out, args.points,
                                                       args.calls, device, blobs[name])
                            rounds.setdefault(path, []).append(result)
                    for path, results in rounds.items():
                        records.append({"model": name, "path": path, "ranks": k,
                                        "device": "host" if path == "roundtrip" else device,
                                        **_median_of_rounds(results)})
                if "inprocess-cpp" in paths and not backend_models.is_onnx(name):
                    records.append(_swap_record(client, ranks, name, device, args.swaps))
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


def _median_of_rounds(results: List[Dict]) -> Dict:
    """One record of several rounds: the median of each figure, and every round's p50."""
    merged = {key: float(np.median([r[key] for r in results]))
              for key in ("p50_us", "p99_us", "mean_us", "calls_per_s")}
    if len(results) > 1:
        merged["rounds_p50_us"] = [r["p50_us"] for r in results]
    return merged


def _swap_record(client, ranks: Ranks, name: str, device: str, count: int) -> Dict:
    """The weight swap of rank 0's in-process backend, ``count`` times: each time a new version
    of the same graph (the current one published again) is published and taken."""
    from .. import keys
    from ..models import registry

    version = registry.latest_version(client, NAMESPACE, name)
    blob, meta = registry.load(client, NAMESPACE, name, version)
    weights = client.get_string(keys.model_weights(NAMESPACE, name, version))
    meta = {k: v for k, v in meta.items() if k not in ("name", "version", "time")}
    seconds = []
    for _ in range(count):
        registry.publish(client, NAMESPACE, name, blob, meta, weights_blob=weights)
        seconds.append(ranks.swap(name, device))
    return {"model": name, "path": "swap", "ranks": 1, "device": device, **latency_us(seconds),
            "calls_per_s": None}


def target_check(records: List[Dict]) -> List[str]:
    """One line per worker record: p50 against 3 x (forward + roundtrip) p50; one per
    inprocess-cpp record: p50 against 1.2 x forward p50; one per weight swap: p50 against 1 ms."""
    by = {(r["model"], r["path"], r["ranks"], r["device"]): r for r in records}
    lines = []
    for r in records:
        forward = by.get((r["model"], "forward", r["ranks"], r["device"]))
        if r["path"] == "inprocess-cpp" and forward:
            target = 1.2 * forward["p50_us"]
            lines.append(f"{r['model']:14} {r['device']:7} ranks={r['ranks']}: inprocess-cpp p50 "
                         f"{r['p50_us']:9.0f} us, target {target:9.0f} us -> "
                         f"{'ok' if r['p50_us'] <= target else 'MISSED'} "
                         f"({r['p50_us'] / forward['p50_us']:.2f} x the bare forward)")
        if r["path"] == "swap":
            lines.append(f"{r['model']:14} {r['device']:7} weight swap p50 {r['p50_us']:9.0f} us, "
                         f"target 1000 us -> {'ok' if r['p50_us'] <= 1000 else 'MISSED'}")
        if r["path"] != "worker":
            continue
        redisai = by.get((r["model"], "redisai", r["ranks"], r["device"]))
        if redisai:
            lines.append(f"{r['model']:14} {r['device']:7} ranks={r['ranks']}: worker p50 "
                         f"{r['p50_us']:9.0f} us, RedisAI p50 {redisai['p50_us']:9.0f} us -> "
                         f"{'ok' if r['p50_us'] <= redisai['p50_us'] else 'MISSED'} "
                         f"({r['p50_us'] / redisai['p50_us']:.2f} x RedisAI)")
        floor = forward
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
        rate = f"{r['calls_per_s']:8.1f} calls/s" if r["calls_per_s"] is not None else ""
        print(f"{r['model']:14} {r['path']:13} {r['device']:7} ranks={r['ranks']}  "
              f"p50 {r['p50_us']:9.0f} us  p99 {r['p99_us']:9.0f} us  {rate}")
    for line in target_check(records):
        print(line)
