"""The model worker: evaluates the registry's models for the solver ranks, next to the database.

Loop: wait for the first request on the worker's queue, gather what else arrives within
``max_wait`` (at most ``max_batch`` requests), evaluate each model's requests in one forward
pass on the worker's device, and push every rank its own slice of the predictions. New model
versions are picked up between batches (every ``reload_interval`` seconds), never inside one;
a new version whose first batch fails (an exception or NaN/Inf outputs) is replaced by the last
version that worked for its model, and is not tried again until a newer one is published.
A heartbeat key with an expiry tells the callers that the worker is alive.

On a CPU the requests of a batch are evaluated in passes of at most ``max_batch_points`` points,
each answered as soon as it ends. Requests are popped and replies pushed by two threads with
connections of their own, so that I/O overlaps the forward passes; a third beats the heartbeat
and reads the registry's versions (Housekeeper). An exported program runs
traced to TorchScript with its activations in place (checked against the exported module at
load), which runs its graph without Python between the operators.
"""

from __future__ import annotations

import collections
import copy
import ctypes
import io
import json
import os
import platform
import queue
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import aot, codec, keys, registry
from . import backends
from ..client import Client
from ..errors import KeyNotFoundError, NekrsMLError, TensorFormatError
from ..inference import (
    STATUS_BAD_INPUT,
    STATUS_MODEL_FAILED,
    STATUS_OK,
    STATUS_UNKNOWN_MODEL,
    Request,
    decode_request,
    reply_prefix,
)

HEARTBEAT_TTL = 3.0          # s: a worker silent for this long counts as dead
LOADING_TTL = 120.0          # s: the heartbeat's life while a model loads (no beats meanwhile)
HEARTBEAT_INTERVAL = 0.5     # s
IDLE_WAIT = 0.2              # s: longest blocking wait, so heartbeats and stops stay timely
REPLY_MIN_TTL_MS = 5000      # replies nobody collects expire
ACTIVE_WINDOW = 1.0          # s: a rank heard from this recently is expected in the next batch
Reply = Tuple[str, int, list]  # (reply key, ttl in ms, the value's chunks)

# On a CPU a forward pass costs in proportion to its points: one pass over the requests of four
# ranks answers all four after four passes' time, one pass each answers them after 1, 2, 3, 4.
# Small requests still share a pass (their fixed cost per pass dominates).
DEFAULT_CPU_BATCH_POINTS = 16384


# glibc hands freed blocks above 128 KiB straight back to the kernel (mmap threshold) and trims
# the top of the heap eagerly, so every forward pass page-faults its activations and outputs
# anew. Keeping freed memory in the heap, as jemalloc does, about halves a CPU forward pass of
# 25,000 points through the 3-64-64-2 model.
MMAP_THRESHOLD = 32 * 1024 * 1024    # glibc's largest allowed value on 64-bit hosts
TRIM_THRESHOLD = 512 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Raises glibc's mmap and trim thresholds for this process, unless the environment sets
    them (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) or the C library is not glibc.
    Returns whether the thresholds were changed."""
    if platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@dataclass
class LoadedModel:
    name: str
    version: int
    meta: dict
    module: object            # torch.jit.ScriptModule (also an exported program, traced) or
                              # the module of an ExportedProgram
    n_in: int
    dtype: np.dtype


@dataclass
class WorkerStats:
    batches: int = 0
    requests: int = 0
    errors: int = 0
    reloads: int = 0
    batch_sizes: List[int] = field(default_factory=list)


def _torch():
    import torch

    return torch


def parse_device(text: str):
    """torch.device of "cpu", "cuda" or "cuda:N"; a missing CUDA device is an error here."""
    torch = _torch()
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NekrsMLError(f"workerDevice = {text}: this torch has no CUDA device; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NekrsMLError(f"workerDevice = {text}: only {torch.cuda.device_count()} CUDA "
                               "device(s) visible")
    elif device.type != "cpu":
        raise NekrsMLError(f"workerDevice = {text}: use cpu, cuda or cuda:N")
    return device


def load_module(blob: bytes, meta: dict, device, prefer_export: bool = False,
                export_blob: Optional[bytes] = None):
    """The callable model of a registry version on ``device``."""
    torch = _torch()
    if meta.get("format") == "export" or (prefer_export and export_blob is not None):
        from torch.export.passes import move_to_device_pass

        program = aot.load_program(export_blob if export_blob is not None else blob,
                                   f"model {meta.get('name')!r} v{meta.get('version')}")
        # an exported program is moved by rewriting its graph (module().to() keeps the
        # devices recorded in the graph)
        return move_to_device_pass(program, device).module()
    module = torch.jit.load(io.BytesIO(blob), map_location=device)
    module.eval()
    return module


class _FailureCarrier:
    """A helper thread's failure, kept to be raised in the serving thread."""

    error: Optional[BaseException] = None

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class ReplySender(_FailureCarrier):
    """Sends the worker's replies on a connection and a thread of their own, so that the next
    forward pass runs while the last replies travel, as RedisAI's main thread talks to the
    clients while its backend thread computes (one pass of 25,000 points on a CPU core takes
    about 1 ms; pushing its replies and reading the server's answer 0.3-0.7 ms). The C++ core
    releases the GIL while it waits on the socket. A failed send is raised by the next send()
    or by close()."""

    def __init__(self, connection):
        self.connection = connection  # a nekrs_ml._core.Client
        self.pending: "queue.Queue[Optional[list]]" = queue.Queue()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="reply-sender", daemon=True)
        self.thread.start()

    def send(self, commands: list) -> None:
        self._raise()
        self.pending.put(commands)

    def _run(self) -> None:
        while True:
            commands = self.pending.get()
            if commands is None:
                return
            try:
                if self.error is None:
                    self.connection.pipeline(commands, True)
            except BaseException as exc:  # raised in the worker's thread by the next send
                self.error = exc

    def close(self, timeout: float = 10.0) -> None:
        """Sends what is queued (waiting at most ``timeout`` s), then closes the connection."""
        self.pending.put(None)
        self.thread.join(timeout)
        self.connection.close()
        self._raise()


# Activations evaluated in place when their input is a fresh result used by nothing else: each
# out-of-place activation allocates (and page-faults) a [points, width] buffer, about a fifth of
# a CPU forward pass of the 3-64-64-2 MLP over 25,000 points.
IN_PLACE_ACTIVATIONS = ("relu", "silu", "gelu", "tanh", "sigmoid", "elu", "leaky_relu",
                        "hardtanh", "mish")
FRESH_RESULTS = ("linear", "addmm", "mm", "convolution", "add", "sub", "mul")


def activations_in_place(module) -> int:
    """Rewrites the graph of an exported program's module (torch.fx) so that activations
    overwrite their input where that input is a fresh result (FRESH_RESULTS) with no other use;
    returns how many were rewritten."""
    torch = _torch()
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    rewritten = 0
    for node in graph.nodes:
        if node.op != "call_function" or not node.args:
            continue
        name = _aten_name(node.target)
        source = node.args[0]
        if (name in IN_PLACE_ACTIVATIONS and hasattr(torch.ops.aten, name + "_")
                and getattr(source, "op", None) == "call_function"
                and _aten_name(source.target) in FRESH_RESULTS and len(source.users) == 1):
            overload = node.target._overloadname
            node.target = getattr(getattr(torch.ops.aten, name + "_"), overload)
            rewritten += 1
    if rewritten:
        module.recompile()
    return rewritten


def untraceable(module) -> str:
    """Why tracing would not keep the graph of an exported program's module ("" if it would): a
    higher-order operator (cond, while_loop, map: the tracer records the branch it takes) or a
    tensor read as a Python number (the tracer records the number)."""
    torch = _torch()
    for node in getattr(getattr(module, "graph", None), "nodes", ()):
        if node.op != "call_function":
            continue
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            return f"the graph has control flow ({node.target.name()})"
        if _aten_name(node.target) in ("_local_scalar_dense", "item"):
            return "the graph reads a tensor as a number"
    return ""


def _aten_name(target) -> str:
    """"silu" for torch.ops.aten.silu.default; "" for anything else."""
    schema = getattr(target, "_schema", None)
    name = getattr(schema, "name", "")
    return name[len("aten::"):] if name.startswith("aten::") else ""


class RequestReceiver:
    """Pops the worker's requests on a connection and a thread of their own, so that the next
    requests arrive while a forward pass runs (the other half of what ReplySender does). Holds
    at most ``limit`` requests the worker has not taken yet; a failed pop is raised by take()."""

    def __init__(self, connection, key: str, limit: int):
        self.connection, self.key, self.limit = connection, key, limit
        self.messages: "collections.deque[bytes]" = collections.deque()
        self.changed = threading.Condition()
        self.stopping = False
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="request-receiver", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping:
                with self.changed:
                    while len(self.messages) >= self.limit and not self.stopping:
                        self.changed.wait(IDLE_WAIT)
                    room = self.limit - len(self.messages)
                if self.stopping:
                    return
                got = self.connection.pipeline([("LPOP", self.key, room)], True)[0] or []
                if not got:  # nothing queued: wait for the next one, briefly (stop stays timely)
                    popped = self.connection.pop_message(self.key, IDLE_WAIT)
                    got = [popped[1]] if popped is not None else []
                if got:
                    with self.changed:
                        self.messages.extend(got)
                        self.changed.notify_all()
        except BaseException as exc:  # raised in the worker's thread by take()
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def take(self, most: int, wait: float) -> List[bytes]:
        """Up to ``most`` received requests, waiting at most ``wait`` s for one."""
        deadline = time.monotonic() + wait
        with self.changed:
            while not self.messages and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self.changed.wait(left)
            if not self.messages:
                error, self.error = self.error, None
                raise error
            taken = [self.messages.popleft() for _ in range(min(most, len(self.messages)))]
            self.changed.notify_all()  # room for the receiver
            return taken

    def stop(self, timeout: float = 10.0) -> List[bytes]:
        """Stops popping; returns the requests received and not taken (to be answered)."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join(timeout)
        self.connection.close()
        with self.changed:
            left, self.messages = list(self.messages), collections.deque()
        return left


class Housekeeper(_FailureCarrier):
    """Beats the worker's heartbeat and reads the registry's current versions on a thread of
    its own, so that the serving thread never waits on the server between passes (on a loaded
    host each such round trip cost it 0.3 ms to several ms: the thread gives up the core while it
    waits). It beats only while the serving loop turns (ModelWorker.beat), and it reads the
    versions every ``reload_interval``; the serving thread switches versions between batches, as
    before. A failure (the server gone) is raised in the serving thread by check()."""

    def __init__(self, worker: "ModelWorker"):
        self.worker = worker
        self.latest: Dict[str, Optional[int]] = {}
        self.error: Optional[BaseException] = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        worker = self.worker
        tick = min(HEARTBEAT_INTERVAL, worker.reload_interval)
        last_read = 0.0
        try:
            while not self.stopping.wait(tick):
                worker.beat(only_if_serving=True)
                now = time.monotonic()
                if now - last_read >= worker.reload_interval:
                    self.latest = worker.latest_versions()
                    last_read = now
        except BaseException as exc:  # raised in the serving thread by check()
            self.error = exc

    def check(self) -> None:
        self._raise()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)


def as_torchscript(module, n_in: int, dtype: np.dtype, device):
    """An exported program's module as TorchScript (traced), or None with the reason.

    The exported module runs its graph in Python, one operator call at a time (about 0.25 ms of
    a 1.3 ms forward of the 1-20-1 MLP over 25,000 points on a CPU core); the traced graph runs
    in libtorch, as RedisAI's TorchScript models do. An exported graph has no Python control
    flow, so tracing keeps it; the traced module is used only if it answers batches of several
    sizes as the exported one does."""
    import warnings

    torch = _torch()
    why = untraceable(module)
    if why:
        return None, why
    tensor_dtype = torch.from_numpy(np.zeros(1, dtype)).dtype
    generator = torch.Generator().manual_seed(0)

    def batch(rows):
        return torch.rand(rows, n_in, generator=generator).to(tensor_dtype).to(device)

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constants and shapes
            rewritten = copy.deepcopy(module)
            activations_in_place(rewritten)
            traced = torch.jit.trace(rewritten, (batch(64),), check_trace=False)
            for rows in (1, 37, 200):
                inputs = batch(rows)
                expected, got = module(inputs), traced(inputs)
                if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5,
                                                                       atol=1e-6, equal_nan=True):
                    return None, f"the traced module answers {rows} rows differently"
    except Exception as exc:  # an exported graph tracing cannot follow (e.g. torch.cond)
        return None, f"tracing failed: {type(exc).__name__}: {str(exc)[:200]}"
    return traced, ""


class ModelWorker:
    def __init__(self, client: Client, ns: str, worker: int = 0, device: str = "cpu",
                 max_batch: int = 64, max_wait: float = 0.0005, reload_interval: float = 0.25,
                 prefer_export: bool = False, log: Callable[[str], None] = print,
                 max_batch_points: int = 0):
        if max_batch < 1 or max_wait < 0 or not reload_interval > 0 or max_batch_points < 0:
            raise NekrsMLError("ModelWorker: need max_batch >= 1, max_wait >= 0, reload_interval "
                               "> 0, max_batch_points >= 0")
        self.client = client
        self.ns = ns
        self.worker = int(worker)
        self.device = parse_device(device)
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.max_batch_points = (int(max_batch_points) or
                                 (DEFAULT_CPU_BATCH_POINTS if self.device.type == "cpu" else 0))
        self.reload_interval = float(reload_interval)
        self.prefer_export = prefer_export
        self.log = log
        self.queue = keys.inference_queue(ns, self.worker)
        self.heartbeat = keys.worker_heartbeat(ns, self.worker)
        self.models: "OrderedDict[str, LoadedModel]" = OrderedDict()
        self.stats = WorkerStats()
        self._last_reload_check = 0.0
        self._last_heartbeat = 0.0
        self._last_seen: Dict[str, float] = {}  # reply key -> when its last request came
        self._bad_versions: Dict[str, int] = {}  # model -> a version that failed to load or run
        self._on_trial: Dict[str, LoadedModel] = {}  # model -> the version to roll back to
        self.stopping = False
        self.sender: Optional[ReplySender] = None  # while serve() runs
        self.receiver: Optional[RequestReceiver] = None  # while serve() runs
        self.housekeeper: Optional[Housekeeper] = None  # while serve() runs
        self._beat_lock = threading.Lock()
        self._loading = False  # a model loads: its long heartbeat must not be shortened
        self._progress_at = time.monotonic()  # the serving loop's last turn

    # --- main loop --------------------------------------------------------------------------
    def serve(self, duration: Optional[float] = None) -> WorkerStats:
        """Serves until ``stop()`` (or a signal handler setting ``stopping``), or ``duration`` s."""
        end = time.monotonic() + duration if duration else None
        keep_freed_memory()
        self.beat(force=True)
        self.sender = ReplySender(self.client.native_connection())
        self.receiver = RequestReceiver(self.client.native_connection(), self.queue,
                                        2 * self.max_batch)
        self.housekeeper = Housekeeper(self)
        try:
            while not self.stopping and (end is None or time.monotonic() < end):
                self.serve_once()
        finally:
            self.housekeeper.stop()
            self.housekeeper = None
            receiver, self.receiver = self.receiver, None
            sender, self.sender = self.sender, None
            try:
                left: List[Request] = []
                self._take(receiver.stop(), left)  # received before the stop: answered
                if left:
                    self.answer(left)
            finally:
                try:
                    sender.close()
                finally:
                    try:
                        self.client.delete(self.heartbeat)
                    except NekrsMLError:
                        pass
        return self.stats

    def stop(self) -> None:
        self.stopping = True

    def serve_once(self, wait: float = IDLE_WAIT) -> int:
        """One batch: returns the number of requests answered (0 after an idle wait)."""
        self._progress_at = time.monotonic()
        if self.housekeeper is not None:
            self.housekeeper.check()
        else:
            self.beat()
        requests = self.gather(wait)
        if not requests:
            return 0
        self.check_versions()
        self.answer(requests)
        return len(requests)

    def beat(self, force: bool = False, ttl: float = HEARTBEAT_TTL, loading: bool = False,
             only_if_serving: bool = False) -> None:
        """Sets the heartbeat key (with ``ttl``). ``loading`` marks a model load under way (its
        long ttl is not shortened until the next plain beat of the serving thread);
        ``only_if_serving`` (the housekeeper's beats) beats only while no load runs and the
        serving loop turned within HEARTBEAT_TTL, so a stuck worker stops counting as alive."""
        now = time.monotonic()
        if not force and now - self._last_heartbeat < HEARTBEAT_INTERVAL:
            return
        with self._beat_lock:
            if only_if_serving and (self._loading or now - self._progress_at > HEARTBEAT_TTL):
                return
            self._loading = loading
            info = {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.device),
                    "models": {m.name: m.version for m in list(self.models.values())},
                    "requests": self.stats.requests, "batches": self.stats.batches}
            self.client.redis.set(self.heartbeat, json.dumps(info), px=int(ttl * 1000))
            self._last_heartbeat = now

    # --- requests ---------------------------------------------------------------------------
    def gather(self, wait: float) -> List[Request]:
        """What is queued (one round trip), else the first request to come (waiting at most
        ``wait`` s); then, while ranks seen in the last second are still missing from the batch
        and the first forward pass is not full (max_batch_points), what arrives within
        ``max_wait``: a lone rank is answered at once, many ranks share one forward pass."""
        requests: List[Request] = []
        queued = self.receive(self.max_batch, max(wait, 1e-3))
        if not queued:
            return requests
        points = self._take(queued, requests)
        deadline = time.monotonic() + self.max_wait
        while len(requests) < self.max_batch and not (
                self.max_batch_points and points >= self.max_batch_points):
            now = time.monotonic()
            if len({r.reply_key for r in requests}) >= self.active_ranks(now):
                break  # every rank heard from lately is in: no extra round trip
            more = self.receive(self.max_batch - len(requests), 0.0)
            if more:
                points += self._take(more, requests)
            elif now >= deadline:
                break
            elif self.receiver is not None:
                points += self._take(
                    self.receiver.take(self.max_batch - len(requests), deadline - now), requests)
            else:
                time.sleep(min(5e-5, deadline - now))
        return requests

    def receive(self, most: int, wait: float) -> List[bytes]:
        """Up to ``most`` requests: those received meanwhile (serve()), else what is queued on
        the server (one round trip), else the first to come within ``wait`` s."""
        if self.receiver is not None:
            return self.receiver.take(most, wait)
        queued = self.client.pop_many(self.queue, most)
        if queued or wait <= 0:
            return queued
        first = self.client.pop(self.queue, wait)
        return [first] if first is not None else []

    def _take(self, messages: List[bytes], requests: List[Request]) -> int:
        """Appends the well-formed requests of ``messages``; returns their points (rows of a
        payload that is not a tensor count none: evaluate() answers it with an error)."""
        now, points = time.monotonic(), 0
        for message in messages:
            try:
                request = decode_request(message)
            except (TensorFormatError, UnicodeDecodeError) as exc:
                self.stats.errors += 1
                self.log(f"worker {self.worker}: dropped a malformed request: {exc}")
                continue
            self._last_seen[request.reply_key] = now
            requests.append(request)
            try:
                shape = codec.decode_header(request.payload, request.reply_key)[1]
                points += shape[0] if shape else 0
            except TensorFormatError:
                pass
        return points

    def active_ranks(self, now: float) -> int:
        """Callers (reply keys) heard from within the last ACTIVE_WINDOW seconds."""
        if len(self._last_seen) > 4 * self.max_batch:  # forget callers long gone
            self._last_seen = {k: t for k, t in self._last_seen.items() if now - t < ACTIVE_WINDOW}
        return sum(now - t < ACTIVE_WINDOW for t in self._last_seen.values())

    def answer(self, requests: List[Request]) -> None:
        by_model: Dict[str, List[Request]] = OrderedDict()
        for request in requests:
            by_model.setdefault(request.model, []).append(request)
        for name, group in by_model.items():
            for replies in self.evaluate(name, group):
                self.send(replies)
        self.stats.requests += len(requests)

    def passes(self, arrays: List[np.ndarray]) -> List[slice]:
        """The requests (by index) of each forward pass: in order, at most max_batch_points
        points per pass (0: no limit), at least one request."""
        limit = self.max_batch_points
        bounds, points = [0], 0
        for index, array in enumerate(arrays):
            if limit and index > bounds[-1] and points + array.shape[0] > limit:
                bounds.append(index)
                points = 0
            points += array.shape[0]
        bounds.append(len(arrays))
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def evaluate(self, name: str, requests: List[Request]) -> Iterator[List[Reply]]:
        """Replies to the requests for model ``name``: the failed ones first, then those of each
        forward pass over the valid ones (passes(): one on a GPU, by points on a CPU), each list
        to be sent as soon as it is ready."""
        try:
            model = self.model(name)
        except KeyNotFoundError as exc:
            yield [self.error_reply(r, STATUS_UNKNOWN_MODEL, 0, str(exc)) for r in requests]
            return
        except Exception as exc:  # a broken blob must not take the worker down
            yield [self.error_reply(r, STATUS_MODEL_FAILED, 0, f"loading failed: {exc}")
                   for r in requests]
            return
        replies, valid, arrays = [], [], []
        for request in requests:
            try:
                array = codec.decode(request.payload, request.reply_key)
            except TensorFormatError as exc:
                replies.append(self.error_reply(request, STATUS_BAD_INPUT, model.version, str(exc)))
                continue
            problem = self.check_inputs(model, array)
            if problem:
                replies.append(self.error_reply(request, STATUS_BAD_INPUT, model.version, problem))
                continue
            valid.append(request)
            arrays.append(array)
        if replies:
            yield replies
        for group in self.passes(arrays):
            yield self.forward_pass(name, model, valid[group], arrays[group])

    def forward_pass(self, name: str, model: LoadedModel, requests: List[Request],
                     arrays: List[np.ndarray]) -> List[Reply]:
        """One forward pass over ``arrays``; each request's reply with its own rows."""
        self.stats.batches += 1
        if len(self.stats.batch_sizes) < 100000:
            self.stats.batch_sizes.append(len(requests))
        try:
            answered_by, outputs = self.forward_or_roll_back(self.models.get(name, model), arrays)
        except Exception as exc:
            self.stats.errors += 1
            return [self.error_reply(r, STATUS_MODEL_FAILED, model.version,
                                     f"forward of {name!r} v{model.version} failed: {exc}")
                    for r in requests]
        replies, start = [], 0
        for request, array in zip(requests, arrays):
            rows = array.shape[0]
            part = np.ascontiguousarray(outputs[start:start + rows])
            start += rows
            head = (reply_prefix(request.request_id, STATUS_OK, answered_by.version)
                    + codec.encode_header(part))
            replies.append((request.reply_key, self.reply_ttl(request),
                            [head, memoryview(part).cast("B")]))
        return replies

    @staticmethod
    def check_inputs(model: LoadedModel, array: np.ndarray) -> str:
        if array.dtype != model.dtype or array.ndim != 2 or array.shape[1] != model.n_in:
            expected = codec.describe(model.dtype, ("points", model.n_in))
            return (f"model {model.name!r} v{model.version} expects {expected}, got "
                    f"{codec.describe(array.dtype, array.shape)}")
        return ""

    def forward(self, model: LoadedModel, arrays: List[np.ndarray]) -> np.ndarray:
        if isinstance(model.module, backends.Backend):
            return model.module.evaluate_rows(arrays, model.dtype)
        torch = _torch()
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        # frombuffer views are read-only; torch wants writeable memory, so copy the single case
        tensor = torch.from_numpy(np.array(batch, copy=True) if len(arrays) == 1 else batch)
        with torch.inference_mode():
            result = model.module(tensor.to(self.device, non_blocking=True))
        result = result.detach().to("cpu")
        if result.ndim != 2 or result.shape[0] != batch.shape[0]:
            raise NekrsMLError(f"the model returned shape {tuple(result.shape)} for inputs "
                               f"{tuple(batch.shape)}; it must return [points, outputs]")
        return result.numpy().astype(model.dtype, copy=False)

    def error_reply(self, request: Request, status: int, version: int, text: str):
        self.stats.errors += 1
        value = reply_prefix(request.request_id, status, version) + text.encode()
        return (request.reply_key, self.reply_ttl(request), [value])

    @staticmethod
    def reply_ttl(request: Request) -> int:
        return max(REPLY_MIN_TTL_MS, 2 * int(request.timeout_ms))

    def send(self, replies: List[Reply]) -> None:
        """RPUSH + PEXPIRE of every reply, pipelined (one round trip per server); the
        prediction arrays are sent from their memory."""
        if not replies:
            return
        commands = []
        for key, ttl, chunks in replies:
            commands.append(("RPUSH", key, chunks))
            commands.append(("PEXPIRE", key, ttl))
        if self.sender is not None:
            self.sender.send(commands)
        else:
            self.client.pipeline(commands)

    # --- models -----------------------------------------------------------------------------
    def model(self, name: str) -> LoadedModel:
        loaded = self.models.get(name)
        if loaded is None:
            loaded = self.load(name, registry.latest_version(self.client, self.ns, name))
        return loaded

    def load(self, name: str, version: Optional[int]) -> LoadedModel:
        if version is None:
            published = registry.models(self.client, self.ns)
            raise KeyNotFoundError(
                f"model {name!r} is not published in namespace {self.ns!r} (published: "
                f"{', '.join(f'{n} v{v}' for n, v in published.items()) or 'none'}); deploy it "
                "with `nekrs-ml deploy FILE --name NAME` or let the trainer publish it")
        blob, meta = registry.load(self.client, self.ns, name, version)
        # loading (on a GPU: CUDA set-up, graph rewriting) may outlast HEARTBEAT_TTL
        self.beat(force=True, ttl=LOADING_TTL, loading=True)
        try:
            export_blob = None
            if self.prefer_export and meta.get("export"):
                export_blob = registry.load_export(self.client, self.ns, name, version)
            n_in, dtype = int(meta["n_in"]), np.dtype(meta.get("dtype", "float32"))
            how = ""
            if backends.backend_of(meta) != "torch":  # ONNX Runtime, TensorFlow, TF Lite
                module = backends.load(blob, meta, str(self.device), _torch().get_num_threads())
                how = f" by {module.backend}" + (f" on {module.placement}"
                                                 if module.placement != str(self.device) else "")
            else:
                module = load_module(blob, meta, self.device, self.prefer_export, export_blob)
            if not isinstance(module, (_torch().jit.ScriptModule, backends.Backend)):
                traced, why = as_torchscript(module, n_in, dtype, self.device)
                module, how = (traced, ", traced") if traced is not None else (module, f", {why}")
        finally:
            self._loading = False  # the next beat has the short ttl again
            self._progress_at = time.monotonic()
        loaded = LoadedModel(name, int(version), meta, module, n_in, dtype)
        previous = self.models.get(name)
        self.models[name] = loaded
        if previous is not None:  # on trial until its first batch; else back to what worked
            self._on_trial[name] = self._on_trial.get(name, previous)
        self.beat(force=True)
        if previous is not None:
            self.stats.reloads += 1
        self.log(f"worker {self.worker}: serving {name!r} v{version} on {self.device}{how}"
                 + (f" (was v{previous.version})" if previous else ""))
        return loaded

    def check_versions(self, force: bool = False) -> None:
        """Between batches: switch every loaded model to the registry's current version."""
        now = time.monotonic()
        if self.housekeeper is not None and not force:
            latest = self.housekeeper.latest  # read by its thread every reload_interval
        elif not self.models or (not force and now - self._last_reload_check < self.reload_interval):
            return
        else:
            self._last_reload_check = now
            latest = self.latest_versions()
        for name, loaded in list(self.models.items()):
            current = latest.get(name)
            if (current is not None and current != loaded.version
                    and self._bad_versions.get(name) != current):
                try:
                    self.load(name, current)
                except Exception as exc:  # keep serving the loaded version
                    self._bad_versions[name] = current
                    self.log(f"worker {self.worker}: cannot load {name!r} v{current}, keeping "
                             f"v{loaded.version}: {exc}")

    def latest_versions(self) -> Dict[str, Optional[int]]:
        """The registry's current version of every loaded model."""
        return {name: registry.latest_version(self.client, self.ns, name)
                for name in list(self.models)}

    # --- a new version on trial -------------------------------------------------------------
    def forward_or_roll_back(self, model: LoadedModel,
                             arrays: List[np.ndarray]) -> Tuple[LoadedModel, np.ndarray]:
        """(model that answered, outputs). A version on trial (loaded to replace another, no
        batch answered yet) that raises or answers non-finite values is rolled back: the last
        version that worked answers the batch instead."""
        fallback = self._on_trial.get(model.name)
        if fallback is None or fallback is model:
            return model, self.forward(model, arrays)
        try:
            outputs = self.forward(model, arrays)
            if not np.isfinite(outputs).all():
                raise NekrsMLError("non-finite outputs (NaN or Inf)")
        except Exception as exc:
            self.roll_back(model, fallback, exc)
            return fallback, self.forward(fallback, arrays)
        del self._on_trial[model.name]  # it works: the old version is no longer needed
        return model, outputs

    def roll_back(self, failed: LoadedModel, fallback: LoadedModel, reason: Exception) -> None:
        self.models[failed.name] = fallback
        self._on_trial.pop(failed.name, None)
        self._bad_versions[failed.name] = failed.version
        self.stats.errors += 1
        self.beat(force=True)
        self.log(f"worker {self.worker}: {failed.name!r} v{failed.version} failed on its first "
                 f"batch ({reason}); rolled back to v{fallback.version}, the last version that "
                 f"worked; v{failed.version} is not tried again until a newer version is published")
