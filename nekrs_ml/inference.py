"""Online inference from Python: ``InferenceClient``, the C++ ``nekrs_ml::InferenceClient`` of
the solver ranks (``nekrs_ml._core.InferenceClient``) with numpy conveniences: the predictions
come back as a new array when no ``out`` is given, with the version that produced them.

A call is two round trips: RPUSH of the request (envelope + this rank's inputs) onto the queue
of the rank's model worker, then BLPOP of the rank's reply list (docs/protocol.md, "Inference
requests"). Without ``out``, the width of the predictions is read from the registry the first
time a model is called (and again when a new version answers with another width). The worker's side of the messages is nekrs_ml.serve.envelope.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from . import _core, codec, keys
from .client import Client
from .environment import check_namespace
from .errors import TensorFormatError
from .models.registry import check_name, latest_version


@dataclass
class Prediction:
    outputs: np.ndarray
    version: int
    seconds: float


class InferenceClient:
    """``InferenceClient(client, namespace="nkml", rank=0, workers=1, timeout=10.0,
    model_namespace=None)``.

    Solver rank ``rank`` sends its requests to worker ``rank % workers`` and reads replies from
    its own list, so every rank needs its own ``rank``. The calls go through a connection of
    their own to the servers of ``client``. ``model_namespace``: where the model registry and
    the workers are (their queues and heartbeats) when several solvers share them, e.g. the
    members of an ensemble, each in its own ``namespace``; the replies still come to
    ``namespace``. Default: ``namespace``.
    """

    def __init__(self, client: Client, namespace: str = "nkml", rank: int = 0, workers: int = 1,
                 timeout: float = 10.0, heartbeat_check: float = 1.0,
                 model_namespace: Optional[str] = None):
        self.client = client
        self.ns = namespace
        if model_namespace:  # the message names the option (the native check names the variable)
            check_namespace(model_namespace, "model_namespace")
        self.rank = int(rank)
        self.timeout = float(timeout)
        self.heartbeat_check = float(heartbeat_check)
        self._connection = client.native_connection()
        # checks the options (ConfigError)
        self._native = _core.InferenceClient(self._connection, namespace, self.rank,
                                             int(workers), self.timeout, self.heartbeat_check,
                                             model_namespace or "")
        self.model_ns = self._native.model_namespace  # the namespace when none was given
        self._widths: Dict[str, int] = {}  # outputs per point of each model, when out is None

    @property
    def queue_key(self) -> str:
        return self._native.queue_key

    @property
    def heartbeat_key(self) -> str:
        return self._native.heartbeat_key

    def reply_key(self, model: str) -> str:
        return self._native.reply_key(model)

    def worker_alive(self) -> bool:
        return self._native.worker_alive()

    def run(self, model: str, inputs: np.ndarray, out: Optional[np.ndarray] = None) -> Prediction:
        """Predictions of ``model`` for ``inputs`` [points, features]; written into ``out``
        (C-contiguous, same dtype, same shape as the predictions) when given."""
        start = time.perf_counter()
        check_name(model)
        if not isinstance(inputs, np.ndarray) or inputs.ndim != 2:
            raise TensorFormatError(f"inference {model!r}: inputs must be a 2-D array "
                                    "[points, features]")
        inputs = np.ascontiguousarray(inputs)
        if out is None:
            reply, buffer = self._run_sized(model, inputs)
        else:
            if (not isinstance(out, np.ndarray) or not out.flags.c_contiguous
                    or out.dtype != inputs.dtype or out.ndim != 2
                    or out.shape[0] != inputs.shape[0]):
                raise self._out_mismatch(model, (inputs.dtype, None), out)
            buffer = out
            reply = self._native.run(model, inputs, buffer)
        shape = tuple(int(n) for n in reply["shape"])
        if out is None:
            predictions = buffer[:int(np.prod(shape))].reshape(shape)
        elif out.shape != shape:
            raise self._out_mismatch(model, (inputs.dtype, shape), out)
        else:
            predictions = out
        return Prediction(predictions, int(reply["version"]), time.perf_counter() - start)

    def _run_sized(self, model: str, inputs: np.ndarray):
        """(reply, buffer) of a call whose predictions (the inputs' dtype) go into a new buffer
        as wide as the model's outputs; read again once when another version answered wider."""
        for attempt in (0, 1):
            if attempt or model not in self._widths:
                self._widths[model] = self._output_width(model)
            buffer = np.empty(inputs.shape[0] * self._widths[model], inputs.dtype)
            try:
                return self._native.run(model, inputs, buffer), buffer
            except TensorFormatError as exc:
                if attempt or "do not fit" not in str(exc):
                    raise

    def _output_width(self, model: str) -> int:
        """Outputs per point of the registry's current version of ``model``; 1 when it has none
        (the worker then answers why)."""
        version = latest_version(self._connection, self.model_ns, model)
        meta = (self._connection.get_string(keys.model_meta(self.model_ns, model, version))
                if version is not None else None)
        width = json.loads(meta).get("n_out") if meta is not None else None
        return max(int(width), 1) if isinstance(width, (int, float)) else 1

    @staticmethod
    def _out_mismatch(model: str, predictions, out) -> TensorFormatError:
        dtype, shape = predictions
        return TensorFormatError(
            f"inference {model!r}: the predictions are "
            f"{codec.describe(dtype, shape if shape is not None else ('points', 'outputs'))} "
            f"but out is "
            f"{codec.describe(getattr(out, 'dtype', None), getattr(out, 'shape', None))}")
