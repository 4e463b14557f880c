"""The model worker: evaluates the registry's models for the solver ranks, next to the database.

Loop: wait for the first request on the worker's queue, gather what else arrives within
``max_wait`` (at most ``max_batch`` requests), evaluate each model's requests in one forward
pass on the worker's device, and push every rank its own slice of the predictions. New model
versions are picked up between batches (every ``reload_interval`` seconds), never inside one;
a new version whose first batch fails (an exception or NaN/Inf outputs) is replaced by the last
version that worked for its model, and is not tried again until a newer one is published.
A heartbeat key with an expiry tells the callers that the worker is alive.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import platform
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import aot, codec, keys, registry
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
    module: object            # torch.jit.ScriptModule or the module of an ExportedProgram
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

        program = aot.load_program(export_blob if export_blob is not None else blob)
        # an exported program is moved by rewriting its graph (module().to() keeps the
        # devices recorded in the graph)
        return move_to_device_pass(program, device).module()
    module = torch.jit.load(io.BytesIO(blob), map_location=device)
    module.eval()
    return module


class ModelWorker:
    def __init__(self, client: Client, ns: str, worker: int = 0, device: str = "cpu",
                 max_batch: int = 64, max_wait: float = 0.0005, reload_interval: float = 0.25,
                 prefer_export: bool = False, log: Callable[[str], None] = print):
        if max_batch < 1 or max_wait < 0 or not reload_interval > 0:
            raise NekrsMLError("ModelWorker: need max_batch >= 1, max_wait >= 0, reload_interval > 0")
        self.client = client
        self.ns = ns
        self.worker = int(worker)
        self.device = parse_device(device)
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
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

    # --- main loop --------------------------------------------------------------------------
    def serve(self, duration: Optional[float] = None) -> WorkerStats:
        """Serves until ``stop()`` (or a signal handler setting ``stopping``), or ``duration`` s."""
        end = time.monotonic() + duration if duration else None
        keep_freed_memory()
        self.beat(force=True)
        try:
            while not self.stopping and (end is None or time.monotonic() < end):
                self.serve_once()
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
        self.beat()
        requests = self.gather(wait)
        if not requests:
            return 0
        self.check_versions()
        self.answer(requests)
        return len(requests)

    def beat(self, force: bool = False, ttl: float = HEARTBEAT_TTL) -> None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < HEARTBEAT_INTERVAL:
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.device),
                "models": {m.name: m.version for m in self.models.values()},
                "requests": self.stats.requests, "batches": self.stats.batches}
        self.client.redis.set(self.heartbeat, json.dumps(info), px=int(ttl * 1000))
        self._last_heartbeat = now

    # --- requests ---------------------------------------------------------------------------
    def gather(self, wait: float) -> List[Request]:
        """The first request (waiting at most ``wait`` s), then whatever else is queued, and,
        while ranks seen in the last second are still missing from the batch, what arrives
        within ``max_wait``: a lone rank is answered at once, many ranks share one forward."""
        requests: List[Request] = []
        first = self.client.pop(self.queue, max(wait, 1e-3))
        if first is None:
            return requests
        self._take([first], requests)
        deadline = time.monotonic() + self.max_wait
        while len(requests) < self.max_batch:
            now = time.monotonic()
            if len({r.reply_key for r in requests}) >= self.active_ranks(now):
                break  # every rank heard from lately is in: no extra round trip
            more = self.client.pop_many(self.queue, self.max_batch - len(requests))
            if more:
                self._take(more, requests)
            elif now >= deadline:
                break
            else:
                time.sleep(min(5e-5, deadline - now))
        return requests

    def _take(self, messages: List[bytes], requests: List[Request]) -> None:
        now = time.monotonic()
        for message in messages:
            try:
                request = decode_request(message)
            except (TensorFormatError, UnicodeDecodeError) as exc:
                self.stats.errors += 1
                self.log(f"worker {self.worker}: dropped a malformed request: {exc}")
                continue
            self._last_seen[request.reply_key] = now
            requests.append(request)

    def active_ranks(self, now: float) -> int:
        """Callers (reply keys) heard from within the last ACTIVE_WINDOW seconds."""
        if len(self._last_seen) > 4 * self.max_batch:  # forget callers long gone
            self._last_seen = {k: t for k, t in self._last_seen.items() if now - t < ACTIVE_WINDOW}
        return sum(now - t < ACTIVE_WINDOW for t in self._last_seen.values())

    def answer(self, requests: List[Request]) -> None:
        replies: List[Tuple[str, int, bytes]] = []  # (reply key, ttl ms, value)
        by_model: Dict[str, List[Request]] = OrderedDict()
        for request in requests:
            by_model.setdefault(request.model, []).append(request)
        for name, group in by_model.items():
            replies.extend(self.evaluate(name, group))
        self.send(replies)
        self.stats.batches += 1
        self.stats.requests += len(requests)
        if len(self.stats.batch_sizes) < 100000:
            self.stats.batch_sizes.append(len(requests))

    def evaluate(self, name: str, requests: List[Request]) -> List[Tuple[str, int, bytes]]:
        """Replies to the requests for model ``name``: one forward pass for all valid ones."""
        try:
            model = self.model(name)
        except KeyNotFoundError as exc:
            return [self.error_reply(r, STATUS_UNKNOWN_MODEL, 0, str(exc)) for r in requests]
        except Exception as exc:  # a broken blob must not take the worker down
            return [self.error_reply(r, STATUS_MODEL_FAILED, 0, f"loading failed: {exc}")
                    for r in requests]
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
        if not valid:
            return replies
        try:
            model, outputs = self.forward_or_roll_back(model, arrays)
        except Exception as exc:
            self.stats.errors += 1
            return replies + [self.error_reply(r, STATUS_MODEL_FAILED, model.version,
                                               f"forward of {name!r} v{model.version} failed: {exc}")
                              for r in valid]
        start = 0
        for request, array in zip(valid, arrays):
            rows = array.shape[0]
            part = np.ascontiguousarray(outputs[start:start + rows])
            start += rows
            head = reply_prefix(request.request_id, STATUS_OK, model.version) + codec.encode_header(part)
            replies.append((request.reply_key, self.reply_ttl(request),
                            [head, memoryview(part).cast("B")]))
        return replies

    @staticmethod
    def check_inputs(model: LoadedModel, array: np.ndarray) -> str:
        expected = codec.describe(model.dtype, ("points", model.n_in))
        if array.dtype != model.dtype or array.ndim != 2 or array.shape[1] != model.n_in:
            return (f"model {model.name!r} v{model.version} expects {expected}, got "
                    f"{codec.describe(array.dtype, array.shape)}")
        return ""

    def forward(self, model: LoadedModel, arrays: List[np.ndarray]) -> np.ndarray:
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

    def send(self, replies: List[Tuple[str, int, list]]) -> None:
        """RPUSH + PEXPIRE of every reply, pipelined (one round trip per server); the
        prediction arrays are sent from their memory."""
        if not replies:
            return
        commands = []
        for key, ttl, chunks in replies:
            commands.append(("RPUSH", key, chunks))
            commands.append(("PEXPIRE", key, ttl))
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
        self.beat(force=True, ttl=LOADING_TTL)
        export_blob = None
        if self.prefer_export and meta.get("export"):
            export_blob = registry.load_export(self.client, self.ns, name, version)
        module = load_module(blob, meta, self.device, self.prefer_export, export_blob)
        loaded = LoadedModel(name, int(version), meta, module, int(meta["n_in"]),
                             np.dtype(meta.get("dtype", "float32")))
        previous = self.models.get(name)
        self.models[name] = loaded
        if previous is not None:  # on trial until its first batch; else back to what worked
            self._on_trial[name] = self._on_trial.get(name, previous)
        self.beat(force=True)
        if previous is not None:
            self.stats.reloads += 1
        self.log(f"worker {self.worker}: serving {name!r} v{version} on {self.device}"
                 + (f" (was v{previous.version})" if previous else ""))
        return loaded

    def check_versions(self, force: bool = False) -> None:
        """Between batches: switch every loaded model to the registry's current version."""
        now = time.monotonic()
        if not self.models or (not force and now - self._last_reload_check < self.reload_interval):
            return
        self._last_reload_check = now
        for name, loaded in list(self.models.items()):
            current = registry.latest_version(self.client, self.ns, name)
            if (current is not None and current != loaded.version
                    and self._bad_versions.get(name) != current):
                try:
                    self.load(name, current)
                except Exception as exc:  # keep serving the loaded version
                    self._bad_versions[name] = current
                    self.log(f"worker {self.worker}: cannot load {name!r} v{current}, keeping "
                             f"v{loaded.version}: {exc}")

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
