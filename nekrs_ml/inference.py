"""Online inference messages (docs/protocol.md, "Inference requests") and the Python
``InferenceClient``, with the semantics of the C++ ``nekrs_ml::InferenceClient``.

A call is two round trips: RPUSH of the request (envelope + this rank's inputs) onto the queue
of the rank's model worker, then BLPOP of the rank's reply list. Replies carry the request id
(replies of earlier, timed-out calls are skipped) and the model version that produced them.
"""

from __future__ import annotations

import random
import struct
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import codec, keys
from .client import Client
from .registry import check_name
from .errors import (
    ConfigError,
    KeyNotFoundError,
    ModelError,
    TensorFormatError,
    TimeoutError,
    WorkerUnavailableError,
)

REQUEST_MAGIC = b"NKIQ"
REPLY_MAGIC = b"NKIR"
ENVELOPE_VERSION = 1
ENVELOPE_BYTES = 24
# magic, version, reserved, reply-key length, model-name length, reserved, timeout ms, request id
_REQUEST = struct.Struct("<4sBBHHHIQ")
# magic, version, status, reserved, model version, request id
_REPLY = struct.Struct("<4sBBHQQ")
assert _REQUEST.size == _REPLY.size == ENVELOPE_BYTES

STATUS_OK, STATUS_UNKNOWN_MODEL, STATUS_BAD_INPUT, STATUS_MODEL_FAILED = 0, 1, 2, 3
_STATUS_ERRORS = {STATUS_UNKNOWN_MODEL: KeyNotFoundError, STATUS_BAD_INPUT: TensorFormatError,
                  STATUS_MODEL_FAILED: ModelError}


@dataclass
class Request:
    request_id: int
    reply_key: str
    model: str
    timeout_ms: int
    payload: memoryview  # the encoded input tensor


def request_prefix(request_id: int, reply_key: str, model: str, timeout: float) -> bytes:
    """Envelope, reply key and model name: what precedes the input tensor in a request."""
    reply, name = reply_key.encode(), model.encode()
    timeout_ms = min(int(np.ceil(timeout * 1e3)), 2**32 - 1)
    return _REQUEST.pack(REQUEST_MAGIC, ENVELOPE_VERSION, 0, len(reply), len(name), 0,
                         timeout_ms, request_id) + reply + name


def decode_request(message: bytes) -> Request:
    """Parses a request; raises TensorFormatError when it is not one."""
    view = memoryview(message)
    if len(view) < ENVELOPE_BYTES:
        raise TensorFormatError(f"request of {len(view)} bytes is shorter than its envelope")
    magic, version, _, reply_len, model_len, _, timeout_ms, request_id = _REQUEST.unpack_from(view)
    if magic != REQUEST_MAGIC or version != ENVELOPE_VERSION:
        raise TensorFormatError(f"not an inference request (magic {bytes(magic)!r}, version {version})")
    end = ENVELOPE_BYTES + reply_len + model_len
    if len(view) < end:
        raise TensorFormatError("request truncated inside its reply key or model name")
    reply_key = bytes(view[ENVELOPE_BYTES:ENVELOPE_BYTES + reply_len]).decode()
    model = bytes(view[ENVELOPE_BYTES + reply_len:end]).decode()
    return Request(request_id, reply_key, model, timeout_ms, view[end:])


def reply_prefix(request_id: int, status: int, version: int) -> bytes:
    return _REPLY.pack(REPLY_MAGIC, ENVELOPE_VERSION, status, 0, int(version), request_id)


def decode_reply(message: bytes) -> Tuple[int, int, int, memoryview]:
    """(request id, status, model version, rest) of a reply."""
    view = memoryview(message)
    if len(view) < ENVELOPE_BYTES:
        raise TensorFormatError(f"reply of {len(view)} bytes is shorter than its envelope")
    magic, version, status, _, model_version, request_id = _REPLY.unpack_from(view)
    if magic != REPLY_MAGIC or version != ENVELOPE_VERSION:
        raise TensorFormatError(f"not an inference reply (magic {bytes(magic)!r})")
    return request_id, status, model_version, view[ENVELOPE_BYTES:]


@dataclass
class Prediction:
    outputs: np.ndarray
    version: int
    seconds: float


class InferenceClient:
    """``InferenceClient(client, namespace="nkml", rank=0, workers=1, timeout=10.0)``.

    Solver rank ``rank`` sends its requests to worker ``rank % workers`` and reads replies from
    its own list, so every rank needs its own ``rank``.
    """

    def __init__(self, client: Client, namespace: str = "nkml", rank: int = 0, workers: int = 1,
                 timeout: float = 10.0, heartbeat_check: float = 1.0):
        if rank < 0 or workers < 1 or not timeout > 0 or not heartbeat_check > 0:
            raise ConfigError("InferenceClient: need rank >= 0, workers >= 1 and positive "
                              f"timeouts, got rank={rank}, workers={workers}, timeout={timeout}")
        self.client = client
        self.ns = namespace
        self.rank = int(rank)
        self.timeout = float(timeout)
        self.heartbeat_check = float(heartbeat_check)
        self.queue_key = keys.inference_queue(namespace, self.rank % workers)
        self.heartbeat_key = keys.worker_heartbeat(namespace, self.rank % workers)
        # random start: a restarted solver never takes an earlier incarnation's reply as its own
        self._next_id = random.SystemRandom().getrandbits(62) + 1

    def reply_key(self, model: str) -> str:
        return keys.inference_reply(self.ns, self.rank, model)

    def worker_alive(self) -> bool:
        return self.client.exists(self.heartbeat_key)

    def run(self, model: str, inputs: np.ndarray, out: Optional[np.ndarray] = None) -> Prediction:
        """Predictions of ``model`` for ``inputs`` [points, features]; written into ``out``
        (C-contiguous, same dtype, same shape as the predictions) when given."""
        start = time.perf_counter()
        check_name(model)
        if not isinstance(inputs, np.ndarray) or inputs.ndim != 2:
            raise TensorFormatError(f"inference {model!r}: inputs must be a 2-D array "
                                    "[points, features]")
        request_id, self._next_id = self._next_id, self._next_id + 1
        reply_key = self.reply_key(model)
        codec.encode_header(inputs, self.queue_key)  # refuses unsendable arrays, naming the key
        prefix = request_prefix(request_id, reply_key, model, self.timeout)
        self.client.push_message(self.queue_key, prefix, np.ascontiguousarray(inputs))
        status, version, rest = self._wait(model, reply_key, request_id, start)
        if status != STATUS_OK:
            error = _STATUS_ERRORS.get(status, ModelError)
            raise error(f"inference {model!r}: the model worker refused the request: "
                        f"{bytes(rest).decode(errors='replace')}")
        predictions = codec.decode(rest, reply_key)
        if out is not None:
            if (not isinstance(out, np.ndarray) or not out.flags.c_contiguous
                    or out.dtype != predictions.dtype or out.shape != predictions.shape):
                raise TensorFormatError(
                    f"inference {model!r}: the predictions are "
                    f"{codec.describe(predictions.dtype, predictions.shape)} but out is "
                    f"{codec.describe(getattr(out, 'dtype', None), getattr(out, 'shape', None))}")
            out[...] = predictions
            predictions = out
        else:
            predictions = predictions.copy()
        return Prediction(predictions, int(version), time.perf_counter() - start)

    def _wait(self, model: str, reply_key: str, request_id: int, start: float):
        deadline = start + self.timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(
                    f"inference {model!r}: no reply within {self.timeout:g} s from the model "
                    f"worker on {self.queue_key!r} (the worker is alive but busy; raise "
                    "inferenceTimeout or add workers)")
            # The socket timeout (client.timeout) must outlast the server-side wait.
            wait = max(1e-3, min(left, self.heartbeat_check, 0.5 * self.client.timeout))
            reply = self.client.pop(reply_key, wait)
            if reply is None:
                if not self.worker_alive():
                    raise WorkerUnavailableError(
                        f"inference {model!r}: no model worker serves {self.queue_key!r} "
                        f"(heartbeat {self.heartbeat_key!r} missing); start one with "
                        "`nekrs-ml serve` or check its log")
                continue
            got_id, status, version, rest = decode_reply(reply)
            if got_id == request_id:
                return status, version, rest
