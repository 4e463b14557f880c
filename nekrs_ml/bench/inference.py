"""Inference call latency through a model worker and in the rank's process, beside a bare torch
forward and bare round trips.

For each model (mlp_1_20_1: 1->20->1, mlp_3_64_64_2: 3->64->64->2; NAME_onnx: the same model as
ONNX, served by ONNX Runtime, with ONNX Runtime as its forward), each device and 1, 2, 4, 8
concurrent ranks (separate processes, started once), every rank makes ``--calls`` calls of
``--points`` wall points each, all ranks starting together. ``resnet50`` (nekrs_ml.bench.resnet:
ResNet-50 on 224x224x3 images, the model of the published in-situ inference figure) sends
``--images`` images per call instead, each image one row of 3*224*224 float32 (``--points`` does
not apply to it); its records add images per second and that figure (``reference``):
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
the same graph) per version, in one rank. Every inprocess-cpp record carries the AOTInductor
compile time of its model (``compile_s``; 0 when the package was already stored).
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

from . import backend_models, resnet
from .harness import WARMUP_CALLS, latency_us, time_calls

NAMESPACE = "bench"
MODELS = {"mlp_1_20_1": (1, [20], 1), "mlp_3_64_64_2": (3, [64, 64], 2)}
DEFAULT_MODELS = tuple(MODELS)
MODELS.update(backend_models.forms(MODELS))  # NAME_onnx: served by ONNX Runtime
# images in, classes out: one row per image (no ONNX form: the MLPs are the backends' comparison)
IMAGE_MODELS = {"resnet50": (resnet.IMAGE_FEATURES, None, resnet.CLASSES)}
MODELS.update(IMAGE_MODELS)
# The worker serves an image model in its TorchScript form (same weights, what RedisAI runs and
# what the worker would trace the exported program to), deployed as NAME + WORKER_FORM, so that
# the worker and RedisAI run the same graph.
WORKER_FORM = "_torchscript"
PATHS = ("forward", "inprocess-cpp", "roundtrip", "worker", "redisai")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=25000,
                        help="wall points per call (the MLPs; resnet50 sends --images instead)")
    parser.add_argument("--images", type=int, default=1,
                        help="images per rank per call for resnet50 (default 1; each image one "
                             "row of 3*224*224 float32 on the wire; the worker batches the rows "
                             "of concurrent ranks)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per rank")
    parser.add_argument("--ranks", default="1,2,4,8", help="concurrent rank counts")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"models to measure, of {', '.join(MODELS)} (NAME_onnx: the same "
                             "model as ONNX, served by ONNX Runtime, which is also its forward; "
                             "resnet50: ResNet-50 on --images images per call, ~0.1-0.3 s per "
                             "image on one CPU core, so use few --calls on a CPU)")
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


def model_blob(name: str, torchscript: bool = False) -> bytes:
    """The deployed form of a benchmark model: its torch.export program (or TorchScript, what
    RedisAI runs; or ONNX for NAME_onnx), all forms with the same weights."""
    if name in IMAGE_MODELS:
        return resnet.program_blob(torchscript=torchscript)
    if backend_models.is_onnx(name):
        return backend_models.onnx_blob(*MODELS[name])
    return build_model(*MODELS[name], torchscript=torchscript)


def rows_per_call(name: str, args) -> int:
    """Rows each rank sends per call: images for an image model, wall points otherwise."""
    return args.images if name in IMAGE_MODELS else args.points


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

    # SmartRedis gives up on a reply after its socket timeout (well under a second by default):
    # a ResNet-50 call that waits behind other ranks' runs in RedisAI's queue takes seconds on a
    # CPU. The clients wait as long as the benchmark does (its own limit: communicate's timeout);
    # values the user set in the environment are kept.
    CLIENT_TIMEOUTS_MS = {"SR_SOCKET_TIMEOUT": "600000", "SR_CMD_TIMEOUT": "600000",
                          "SR_MODEL_TIMEOUT": "600000"}

    def _run(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([self.python, self.CLIENT, self.address, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**self.CLIENT_TIMEOUTS_MS, **os.environ})

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
def _rank_main(rank: int, addresses, password: str, threads: int, inference_timeout: float,
               conn) -> None:
    """Serves measurement commands from the controller until told to stop."""
    import torch

    from .. import _core

    if threads:
        torch.set_num_threads(threads)
    client = _core.Client(addresses, password=password)
    inference = _core.InferenceClient(client, NAMESPACE, rank, 1, inference_timeout)
    modules: Dict[str, object] = {}  # Python forwards and in-process backends by model@device
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        try:
            if command[0] == "swap":
                conn.send(_swap(client, modules, *command[1:]))
                continue
            conn.send(_measure(rank, client, inference, modules, conn, *command[1:]))
        except _Stopped:
            break
        except Exception as exc:  # reported by the controller
            conn.send(f"rank {rank}: {type(exc).__name__}: {exc}")
    client.close()


class _Stopped(Exception):
    """The controller stopped the ranks while this one waited for the start of its timing."""


def _measure(rank, client, inference, modules, conn, path, model, n_in, n_out, points, calls,
             device, blob):
    """Per-call seconds of `calls` timed calls of one path, and their total wall time; first
    the warm-up calls and one more, whose seconds go to the controller, which answers with the
    start time shared by all ranks."""
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
    if path == "worker":
        _first_call_when_the_worker_is_back(call)
    time_calls(call, 0)  # the warm-up calls only
    began = time.perf_counter()
    call()
    conn.send(time.perf_counter() - began)
    command = conn.recv()
    if command[0] != "start":
        raise _Stopped()
    return time_calls(call, calls, command[1])


def _first_call_when_the_worker_is_back(call, patience: float = 300.0) -> None:
    """The first call of a large model: the worker stops beating its heartbeat while one pass
    outlasts HEARTBEAT_TTL (3 s), as the first passes of a TorchScript ResNet-50 (the JIT's
    profiling runs) can on a busy machine, and the caller then counts it as gone. Retried for
    ``patience`` seconds; the timed calls are not retried."""
    from ..errors import WorkerUnavailableError

    deadline = time.monotonic() + patience
    while True:
        try:
            call()
            return
        except WorkerUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


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

    def __init__(self, count: int, addresses, password: str, threads: int,
                 inference_timeout: float = 60.0):
        context = mp.get_context("spawn")
        self.pipes, self.processes = [], []
        for rank in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_rank_main,
                                      args=(rank, addresses, password, threads, inference_timeout,
                                            child),
                                      daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def measure(self, ranks: int, *args, answer_timeout: float = 600.0) -> Dict:
        """One path measured by ``ranks`` ranks together (``answer_timeout``: the longest wait
        for each rank's answer). Every rank first warms up (loading a model, in a rank or in
        the worker, can take many seconds for a large one) and tells how long its last call
        took; the timed calls of all ranks then start together, after the warm-up calls
        time_calls makes first (twice that call, per warm-up call, covers ranks sharing cores)."""
        pipes = self.pipes[:ranks]
        for pipe in pipes:
            pipe.send(("run",) + args)
        call_s = max(self._answer(pipe, answer_timeout) for pipe in pipes)
        start_at = time.time() + 1.0 + 2.0 * WARMUP_CALLS * call_s
        for pipe in pipes:
            pipe.send(("start", start_at))
        return latency_record([self._answer(pipe, answer_timeout) for pipe in pipes])

    @staticmethod
    def _answer(pipe, timeout: float):
        if not pipe.poll(timeout):
            raise RuntimeError(f"a benchmark rank did not answer within {timeout:.0f} s")
        result = pipe.recv()
        if isinstance(result, str):
            raise RuntimeError(f"bench inference: {result}")
        return result

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
    if args.images < 1:
        raise SystemExit("bench inference: --images must be at least 1 (images per rank per "
                         "call of resnet50)")
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
            log(f"deploying {name}")
            # an image model's exported program only for the paths that run it (making and
            # probing it takes seconds)
            if name not in IMAGE_MODELS or {"forward", "inprocess-cpp"} & set(paths):
                blobs[name] = model_blob(name)
                model_file = os.path.join(run_dir, name + backend_models.suffix(name))
                with open(model_file, "wb") as handle:
                    handle.write(blobs[name])
                # the width explicitly: the first 2-D weight of a ResNet is its classifier's
                deploy(client, NAMESPACE, name, model_file, n_in=MODELS[name][0])
            script_file = os.path.join(run_dir, f"{name}.torchscript.pt")
            if not onnx and (redisai is not None or name in IMAGE_MODELS):
                with open(script_file, "wb") as handle:
                    handle.write(model_blob(name, torchscript=True))
            if name in IMAGE_MODELS and "worker" in paths:
                deploy(client, NAMESPACE, name + WORKER_FORM, script_file, n_in=MODELS[name][0])
            if redisai is not None and not onnx:
                redisai.set_model(f"bench_{name}", script_file)
        # a large model's first call waits for the worker to load (and check) it
        inference_timeout = 600.0 if set(models) & set(IMAGE_MODELS) else 60.0
        ranks = Ranks(max(rank_counts), info["addresses"], orch.password, args.rank_threads,
                      inference_timeout)
        for device in _devices(args.devices):
            compile_s: Dict[str, float] = {}
            for name in models:
                if "inprocess-cpp" in paths and not backend_models.is_onnx(name):
                    log(f"compiling {name} for {device}")
                    began = time.perf_counter()
                    _, compiled = aot.ensure_package(client, NAMESPACE, name, device=device)
                    compile_s[name] = time.perf_counter() - began if compiled else 0.0
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
                rows = rows_per_call(name, args)
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
                                                         rows, args.calls)
                            else:
                                # the program travels only to the path that loads it in the rank
                                blob = blobs.get(name) if path == "forward" else None
                                served = name + WORKER_FORM if path == "worker" and \
                                    name in IMAGE_MODELS else name
                                result = ranks.measure(k, path, served, n_in, n_out, rows,
                                                       args.calls, device, blob)
                            rounds.setdefault(path, []).append(result)
                    for path, results in rounds.items():
                        record = {"model": name, "path": path, "ranks": k,
                                  "device": "host" if path == "roundtrip" else device,
                                  **_median_of_rounds(results)}
                        if path == "inprocess-cpp":
                            record["compile_s"] = compile_s[name]
                        if name in IMAGE_MODELS:
                            record.update(_image_fields(path, rows, record))
                        records.append(record)
                # the weight swap is timed on the MLPs (a new ResNet-50 version would also make
                # the worker load and check 100 MB again)
                if "inprocess-cpp" in paths and not backend_models.is_onnx(name) and \
                        name not in IMAGE_MODELS:
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


def _image_fields(path: str, images: int, record: Dict) -> Dict:
    """An image model's record: images per call and rank, images per second over all ranks,
    and the published figure its path compares with (``reference``; none for roundtrip)."""
    fields = {"images": images, "images_per_s": record["calls_per_s"] * images}
    if path == "worker":
        fields["served_form"] = "torchscript"  # see WORKER_FORM
    figure = resnet.REFERENCE_FIGURE.get(path)
    if figure:
        fields["reference"] = {**resnet.REFERENCE, "compare_with": figure}
    return fields


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
        if "images_per_s" in r:
            rate += f"  {r['images_per_s']:7.2f} images/s ({r['images']} per call)"
        if "compile_s" in r:
            rate += f"  compiled in {r['compile_s']:.1f} s"
        print(f"{r['model']:14} {r['path']:13} {r['device']:7} ranks={r['ranks']}  "
              f"p50 {r['p50_us']:9.0f} us  p99 {r['p99_us']:9.0f} us  {rate}")
        if "reference" in r:
            print(f"{'':14} {'':13} {'':7} beside: {reference_text(r['reference'])}")
    for line in target_check(records):
        print(line)


def reference_text(reference: Dict) -> str:
    """The published figure a record compares with, in words."""
    if reference["compare_with"] == "model_evaluation_ms":
        figure = f"~{reference['model_evaluation_ms']:.0f} ms model evaluation"
    else:
        low, high = reference["per_call_ms"]
        figure = f"~{low:.0f}-{high:.0f} ms per call (send + run + retrieve)"
    return f"{figure}, {reference['machine']} (Balin et al. 2023)"
