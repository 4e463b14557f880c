"""Model and script execution for SmartRedis clients (docs/smartredis.md).

The nkml_ai module in each --smartredis server queues every AI.MODELEXECUTE / AI.SCRIPTRUN /
AI.SCRIPTEXECUTE as a job and blocks its caller. A ``SmartRedisBridge`` inside a model worker
keeps one connection per server (each shard of a cluster, since a job lives where its keys
do), takes jobs with ``NKML.AI.TAKE``, runs the TorchScript model or script function on the
worker's device and answers with ``NKML.AI.DONE``, which writes the outputs and unblocks the
caller. Models and scripts are loaded from their records (docs/protocol.md, "RedisAI
compatibility") and cached until the key is stored again.
"""

from __future__ import annotations

import io
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import redis

from .. import codec
from ..models import backends
from ..client import Address

TAKE_WAIT_MS = 1000  # one NKML.AI.TAKE blocks this long at most, so stop() is prompt
RECONNECT_WAIT = 1.0
RECORD_MAGIC = b"NKAI"
KIND_MODEL, KIND_SCRIPT = 1, 2


@dataclass
class Record:
    """A model or script as the nkml_ai module stores it."""

    kind: int
    store_id: int
    backend: str
    device: str
    tag: str
    names: List[str]  # models: input then output names; scripts: entry points
    payload: bytes    # the model (TorchScript, ONNX, TF frozen graph, TFLite) or script source
    n_inputs: int = 0


def parse_record(value: bytes, key: str) -> Record:
    def fail(why):
        return ValueError(f"key {key!r} does not hold a model or script record ({why})")

    if len(value) < 16 or value[:4] != RECORD_MAGIC or value[4] != 1:
        raise fail("bad header")
    kind = value[5]
    store_id = struct.unpack_from("<Q", value, 8)[0]
    offset = 16

    def take_string():
        nonlocal offset
        if offset + 4 > len(value):
            raise fail("truncated")
        (length,) = struct.unpack_from("<I", value, offset)
        if offset + 4 + length > len(value):
            raise fail("truncated")
        text = value[offset + 4:offset + 4 + length]
        offset += 4 + length
        return text.decode("utf-8", "replace")

    backend, device, tag = take_string(), take_string(), take_string()
    if offset + 32 > len(value):
        raise fail("truncated")
    n_inputs, n_outputs = struct.unpack_from("<II", value, offset + 24)
    offset += 32
    names = [take_string() for _ in range(n_inputs + n_outputs)]
    return Record(kind, store_id, backend, device, tag, names, bytes(value[offset:]), n_inputs)


def _reason(exc: Exception, limit: int = 400) -> str:
    """One line: TorchScript errors carry the interpreter's traceback first and the cause last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return text if len(text) <= limit else text[:limit] + "..."


def _as_tensors(result) -> list:
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


class SmartRedisBridge:
    """Serves the jobs of every given server from one thread per server."""

    def __init__(self, addresses: List[str], password: Optional[str], device,
                 log: Callable[[str], None] = print, timeout: float = 10.0):
        self.addresses = list(addresses)
        self.password = password
        self.device = device
        self.log = log
        self.timeout = timeout
        self.jobs = 0
        self.errors = 0
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._cache: Dict[Tuple[str, bytes], Tuple[int, object]] = {}
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "SmartRedisBridge":
        for address in self.addresses:
            thread = threading.Thread(target=self._serve, args=(address,), daemon=True,
                                      name=f"smartredis {address}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _connect(self, address: str) -> redis.Redis:
        parsed = Address.parse(address)
        options = dict(username="default" if self.password else None, password=self.password,
                       socket_timeout=self.timeout + TAKE_WAIT_MS / 1e3,
                       socket_connect_timeout=self.timeout)
        if parsed.path:
            return redis.Redis(unix_socket_path=parsed.path, **options)
        return redis.Redis(host=parsed.host, port=parsed.port, **options)

    def _serve(self, address: str) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect(address)
                job = conn.execute_command("NKML.AI.TAKE", TAKE_WAIT_MS)
                if job:
                    self._run(conn, address, job)
            except redis.ResponseError as exc:
                if "unknown command" in str(exc).lower():
                    self.log(f"{address} does not answer RedisAI commands (started without "
                             "--smartredis?); SmartRedis jobs are not served there")
                    return
                self.log(f"SmartRedis job at {address}: {exc}")
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if conn is not None:
                    self.log(f"lost {address} ({exc}); reconnecting")
                    conn.close()
                    conn = None
                self._stop.wait(RECONNECT_WAIT)
        if conn is not None:
            conn.close()

    # --- one job --------------------------------------------------------------------------------
    def _run(self, conn: redis.Redis, address: str, job: list) -> None:
        job_id, kind, key, function, store_id, inputs, _n_outputs = job
        kind = kind.decode() if isinstance(kind, bytes) else kind
        try:
            runnable = self._load(conn, address, key, int(store_id), kind)
            arrays = [codec.decode(value, f"input {i} of {key!r}") for i, value in enumerate(inputs)]
            if isinstance(runnable, backends.Backend):  # TF, TFLITE, ONNX
                encoded = [codec.encode(np.ascontiguousarray(a), f"output {i}")
                           for i, a in enumerate(runnable.run(arrays))]
            else:
                tensors = [self._to_torch(array) for array in arrays]
                torch = _torch()
                with torch.inference_mode():
                    if kind == "script":
                        outputs = self._call_script(runnable, function.decode(), tensors)
                    else:
                        outputs = _as_tensors(runnable(*tensors))
                encoded = [self._encode(t, i) for i, t in enumerate(outputs)]
        except Exception as exc:  # any failure of the model is the caller's error reply
            self.errors += 1
            conn.execute_command("NKML.AI.DONE", job_id, "ERR",
                                 f"{kind} {key.decode(errors='replace')}: {_reason(exc)}")
            return
        self.jobs += 1
        try:
            conn.execute_command("NKML.AI.DONE", job_id, "OK", *encoded)
        except redis.ResponseError as exc:  # the caller timed out or left meanwhile
            self.log(f"answer to a {kind} job of {key!r} not taken: {exc}")

    def _load(self, conn: redis.Redis, address: str, key: bytes, store_id: int, kind: str):
        with self._lock:
            cached = self._cache.get((address, key))
            if cached and cached[0] == store_id:
                return cached[1]
        value = conn.execute_command("GET", key)
        if value is None:
            raise KeyError(f"{key!r} was deleted")
        record = parse_record(value, key.decode(errors="replace"))
        torch = _torch()
        if kind == "model" and record.backend.upper() != "TORCH":
            runnable = backends.for_redisai(record.backend, record.payload,
                                            record.names[:record.n_inputs],
                                            record.names[record.n_inputs:], str(self.device),
                                            torch.get_num_threads())
        elif kind == "model":
            runnable = torch.jit.load(io.BytesIO(record.payload), map_location=self.device)
            runnable.eval()
        else:
            runnable = torch.jit.CompilationUnit(record.payload.decode("utf-8"))
        with self._lock:
            self._cache[(address, key)] = (record.store_id, runnable)
        return runnable

    @staticmethod
    def _call_script(unit, function: str, tensors: list) -> list:
        try:
            fn = getattr(unit, function)
        except AttributeError:
            raise AttributeError(f"the script has no function {function!r}") from None
        arguments = fn.schema.arguments
        # RedisAI 1.2 entry points take (tensors: List[Tensor], keys: List[str], args: List[str])
        if arguments and str(arguments[0].type) == "List[Tensor]":
            return _as_tensors(fn(tensors, [], []))
        return _as_tensors(fn(*tensors))

    def _to_torch(self, array: np.ndarray):
        torch = _torch()
        return torch.from_numpy(np.array(array, copy=True)).to(self.device)

    @staticmethod
    def _encode(tensor, index: int) -> bytes:
        torch = _torch()
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"output {index} is a {type(tensor).__name__}, not a tensor")
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        return codec.encode(array, f"output {index}")


def _torch():
    import torch

    return torch
