"""The model worker: evaluates the registry's models for the solver ranks, next to the database.

Loop: wait for the first request on the worker's queue, gather what else arrives within
``max_wait`` (at most ``max_batch`` requests), evaluate each model's requests in one forward
pass on the worker's device, and push every rank its own slice of the predictions. New model
versions are picked up between batches (every ``reload_interval`` seconds), never inside one;
a new version whose first batch fails (an exception or NaN/Inf outputs) is replaced by the last
version that worked for its model, and is not tried again until a newer one is published.
A heartbeat key with an expiry tells the callers that the worker is alive.

On a CPU the requests of a batch are evaluated in passes of at most ``max_batch_points`` points,
each answered as soon as it ends. Requests are popped, replies pushed, and the heartbeat and the
registry's versions kept up by helper threads (nekrs_ml.serve.io_threads), so that I/O overlaps
the forward passes. How a stored model becomes something that evaluates a batch is
nekrs_ml.serve.loading.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import codec, keys
from ..client import Client
from ..errors import KeyNotFoundError, NekrsMLError, TensorFormatError
from ..models import registry
from .allocator import keep_freed_memory
from .envelope import (
    STATUS_BAD_INPUT,
    STATUS_MODEL_FAILED,
    STATUS_OK,
    STATUS_UNKNOWN_MODEL,
    Request,
    decode_request,
    reply_prefix,
)
from .io_threads import Housekeeper, ReplySender, RequestReceiver
from .loading import LoadedModel, ModelRecord, load_model, parse_device

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


@dataclass
class WorkerStats:
    batches: int = 0
    requests: int = 0
    errors: int = 0
    reloads: int = 0
    batch_sizes: List[int] = field(default_factory=list)


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
        self._last_heartbeat = 0.0
        self._last_seen: Dict[str, float] = {}  # reply key -> when its last request came
        self._bad_versions: Dict[str, int] = {}  # model -> a version that failed to load or run
        self._on_trial: Dict[str, LoadedModel] = {}  # model -> the version to roll back to
        self.stopping = False
        # the helper threads, while serve() runs
        self.sender: Optional[ReplySender] = None
        self.receiver: Optional[RequestReceiver] = None
        self.housekeeper: Optional[Housekeeper] = None
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
                                        2 * self.max_batch, IDLE_WAIT)
        self.housekeeper = Housekeeper(lambda: self.beat(only_if_serving=True),
                                       self.latest_versions,
                                       min(HEARTBEAT_INTERVAL, self.reload_interval),
                                       self.reload_interval)
        try:
            while not self.stopping and (end is None or time.monotonic() < end):
                self._serve_once()
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

    def _serve_once(self, wait: float = IDLE_WAIT) -> int:
        """One batch of serve()'s loop: returns the number of requests answered (0 after an idle
        wait)."""
        self._progress_at = time.monotonic()
        self.housekeeper.check()
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
                    "refused": dict(self._bad_versions),  # failed to load, or rolled back
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
        queued = self.receiver.take(self.max_batch, max(wait, 1e-3))
        if not queued:
            return requests
        points = self._take(queued, requests)
        deadline = time.monotonic() + self.max_wait
        while len(requests) < self.max_batch and not (
                self.max_batch_points and points >= self.max_batch_points):
            now = time.monotonic()
            if len({r.reply_key for r in requests}) >= self.active_ranks(now):
                break  # every rank heard from lately is in: no extra round trip
            more = self.receiver.take(self.max_batch - len(requests), 0.0)
            if more:
                points += self._take(more, requests)
            elif now >= deadline:
                break
            else:
                points += self._take(
                    self.receiver.take(self.max_batch - len(requests), deadline - now), requests)
        return requests

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
        """The predictions of ``arrays`` (the requests of one pass, in order), stacked."""
        return model.evaluate(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))

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
        else:  # serve() is stopping: its last requests are answered on this connection
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
            record = ModelRecord(name, int(version), meta, blob)
            if self.prefer_export and meta.get("export"):
                record.export_blob = registry.load_export(self.client, self.ns, name, version)
            loaded = load_model(record, self.device, self.prefer_export)
        finally:
            self._loading = False  # the next beat has the short ttl again
            self._progress_at = time.monotonic()
        previous = self.models.get(name)
        self.models[name] = loaded
        if previous is not None:  # on trial until its first batch; else back to what worked
            self._on_trial[name] = self._on_trial.get(name, previous)
        self.beat(force=True)
        if previous is not None:
            self.stats.reloads += 1
        self.log(f"worker {self.worker}: serving {name!r} v{version} on {self.device}{loaded.note}"
                 + (f" (was v{previous.version})" if previous else ""))
        return loaded

    def check_versions(self) -> None:
        """Between batches: switch every loaded model to the registry's current version (as
        the housekeeper read it last, every reload_interval)."""
        latest = self.housekeeper.latest
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
