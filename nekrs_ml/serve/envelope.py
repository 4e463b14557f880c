"""The model worker's side of the inference messages (docs/protocol.md, "Inference requests"):
reading a request's envelope and writing a reply's. The solver side of the same envelopes is the
C++ ``nekrs_ml::InferenceClient`` (udf/src/inference.cpp); tests/integration/test_envelope_parity.py holds
the two to one layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import TensorFormatError

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


@dataclass
class Request:
    request_id: int
    reply_key: str
    model: str
    timeout_ms: int
    payload: memoryview  # the encoded input tensor


def decode_request(message: bytes) -> Request:
    """Parses a request; raises TensorFormatError when it is not one."""
    view = memoryview(message)
    if len(view) < ENVELOPE_BYTES:
        raise TensorFormatError(f"request of {len(view)} bytes is shorter than its envelope")
    magic, version, _, reply_len, model_len, _, timeout_ms, request_id = _REQUEST.unpack_from(view)
    if magic != REQUEST_MAGIC or version != ENVELOPE_VERSION:
        raise TensorFormatError(f"not an inference request (magic {bytes(magic)!r}, "
                                f"version {version})")
    end = ENVELOPE_BYTES + reply_len + model_len
    if len(view) < end:
        raise TensorFormatError("request truncated inside its reply key or model name")
    reply_key = bytes(view[ENVELOPE_BYTES:ENVELOPE_BYTES + reply_len]).decode()
    model = bytes(view[ENVELOPE_BYTES + reply_len:end]).decode()
    return Request(request_id, reply_key, model, timeout_ms, view[end:])


def reply_prefix(request_id: int, status: int, version: int) -> bytes:
    """The envelope of a reply: followed by the encoded predictions (STATUS_OK) or the reason."""
    return _REPLY.pack(REPLY_MAGIC, ENVELOPE_VERSION, status, 0, int(version), request_id)
