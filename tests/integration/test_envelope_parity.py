"""The inference envelopes are written in two languages: the solver's side in C++
(nekrs_ml::InferenceClient writes requests and reads replies) and the model worker's in Python
(nekrs_ml.serve.envelope reads requests and writes replies). Each side reads here what the other
wrote, through a real server, with the test standing in for the model worker."""

import json
import threading
import uuid

import numpy as np
import pytest

from nekrs_ml import _core, codec, keys
from nekrs_ml.client import Client
from nekrs_ml.errors import KeyNotFoundError, ModelError, TensorFormatError
from nekrs_ml.inference import InferenceClient
from nekrs_ml.serve.envelope import (
    ENVELOPE_BYTES,
    ENVELOPE_VERSION,
    REQUEST_MAGIC,
    STATUS_BAD_INPUT,
    STATUS_MODEL_FAILED,
    STATUS_OK,
    STATUS_UNKNOWN_MODEL,
    decode_request,
    reply_prefix,
)

RANK, TIMEOUT = 5, 2.5


@pytest.fixture
def stand_in(tcp_server):
    """(namespace, Python client, C++ InferenceClient of rank RANK) with a live heartbeat and
    no worker: the test answers the requests itself."""
    ns = f"t{uuid.uuid4().hex[:8]}"
    client = Client(**tcp_server.client_args())
    client.redis.set(keys.worker_heartbeat(ns, 0), b"{}")
    native = _core.Client(**tcp_server.client_args())
    try:
        yield ns, client, _core.InferenceClient(native, ns, RANK, 1, TIMEOUT, 1.0)
    finally:
        native.close()
        client.close()


def in_thread(run, *args):
    """Starts ``run(*args)``; returns the thread and where its reply or error will be."""
    outcome = {}

    def call():
        try:
            outcome["reply"] = run(*args)
        except Exception as exc:  # checked by the test
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def take_request(client, ns):
    message = client.pop(keys.inference_queue(ns, 0), 10.0)
    assert message is not None, "no request arrived"
    return message


def reply(request, status, version, body: bytes) -> bytes:
    return reply_prefix(request.request_id, status, version) + body


def encoded(array: np.ndarray) -> bytes:
    return codec.encode_header(array) + array.tobytes()


def test_the_worker_reads_a_cpp_request_and_the_cpp_client_reads_its_reply(stand_in):
    ns, client, inference = stand_in
    inputs = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = np.zeros((4, 2), np.float32)
    thread, outcome = in_thread(inference.run, "wall_model", inputs, out)

    message = take_request(client, ns)
    assert message[:4] == REQUEST_MAGIC and message[4] == ENVELOPE_VERSION
    request = decode_request(message)
    assert request.model == "wall_model"
    assert request.reply_key == inference.reply_key("wall_model")
    assert request.reply_key == keys.inference_reply(ns, RANK, "wall_model")
    assert request.timeout_ms == int(TIMEOUT * 1000)
    assert len(message) == ENVELOPE_BYTES + len(request.reply_key) + len("wall_model") + len(
        encoded(inputs))
    np.testing.assert_array_equal(codec.decode(request.payload), inputs)

    predictions = np.array([[1.5, -2.0], [0.25, 3.0], [7.0, 8.0], [-1.0, 0.0]], np.float32)
    # a reply left by an earlier call (another request id) comes first: the caller drops it
    stale = reply_prefix(request.request_id - 1, STATUS_OK, 6) + encoded(predictions * 0)
    client.redis.rpush(request.reply_key, stale,
                       reply(request, STATUS_OK, 7, encoded(predictions)))
    thread.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["reply"]["version"] == 7
    assert tuple(outcome["reply"]["shape"]) == (4, 2)
    np.testing.assert_array_equal(out, predictions)


@pytest.mark.parametrize("status, error", [(STATUS_UNKNOWN_MODEL, KeyNotFoundError),
                                           (STATUS_BAD_INPUT, TensorFormatError),
                                           (STATUS_MODEL_FAILED, ModelError)])
def test_each_refusal_of_the_worker_is_the_cpp_clients_error(stand_in, status, error):
    ns, client, inference = stand_in
    inputs = np.ones((2, 3), np.float32)
    thread, outcome = in_thread(inference.run, "m", inputs, np.empty((2, 2), np.float32))
    request = decode_request(take_request(client, ns))
    client.redis.rpush(request.reply_key, reply(request, status, 3, "why it was refused".encode()))
    thread.join(10)
    assert type(outcome.get("error")) is error
    assert "the model worker refused the request: why it was refused" in str(outcome["error"])


def test_the_python_inference_client_is_the_cpp_one(stand_in, tcp_server):
    """nekrs_ml.inference.InferenceClient sends the C++ request and sizes its predictions from
    the registry's current version."""
    ns, client, _ = stand_in
    client.redis.set(keys.model_latest(ns, "m"), 4)
    client.redis.set(keys.model_meta(ns, "m", 4), json.dumps({"n_in": 3, "n_out": 2}))
    python = InferenceClient(client, ns, rank=RANK, timeout=TIMEOUT)
    assert python.queue_key == keys.inference_queue(ns, 0)
    assert python.worker_alive()
    inputs = np.arange(9, dtype=np.float32).reshape(3, 3)
    thread, outcome = in_thread(python.run, "m", inputs)
    request = decode_request(take_request(client, ns))
    assert request.reply_key == python.reply_key("m") == keys.inference_reply(ns, RANK, "m")
    predictions = np.arange(6, dtype=np.float32).reshape(3, 2) / 4
    client.redis.rpush(request.reply_key, reply(request, STATUS_OK, 4, encoded(predictions)))
    thread.join(10)
    assert "error" not in outcome, outcome.get("error")
    prediction = outcome["reply"]
    assert prediction.version == 4 and prediction.seconds > 0
    np.testing.assert_array_equal(prediction.outputs, predictions)
