"""Tensor wire format (docs/protocol.md) for numpy arrays.

One tensor is one Redis value: an 8-byte fixed header (magic ``NKML``, format version,
dtype code, rank, reserved byte), the shape as ``rank`` little-endian uint64, then the raw
little-endian row-major data. The C++ codec (udf/src/codec.cpp) writes the same bytes.
"""

from __future__ import annotations

import struct
from typing import Tuple

import numpy as np

from . import protocol
from .errors import TensorFormatError

MAGIC = protocol.TENSOR["magic"].encode("ascii")
FORMAT_VERSION = protocol.TENSOR["format_version"]
MAX_RANK = protocol.TENSOR["max_rank"]
FIXED_HEADER_BYTES = protocol.TENSOR["fixed_header_bytes"]

#: dtype code on the wire -> numpy dtype (little-endian); the codes are those of protocol.tsv
DTYPE_BY_CODE = {dt.code: np.dtype(dt.name).newbyteorder("<") for dt in protocol.DTYPES}
CODE_BY_NAME = {dt.name: code for code, dt in DTYPE_BY_CODE.items()}
# dtype objects compare (and hash) by what they describe: "<f4" and "=f4" are one key here on a
# little-endian host, ">f4" is not. The lookup skips np.dtype() and .name (several µs per call).
_CODE_BY_DTYPE = {dt: code for code, dt in DTYPE_BY_CODE.items()}
DTYPE_NAMES = tuple(CODE_BY_NAME)

_FIXED = struct.Struct("<4sBBBB")


_SHAPE_STRUCTS = tuple(struct.Struct(f"<{ndim}Q") for ndim in range(MAX_RANK + 1))


def _shape_struct(ndim: int) -> struct.Struct:
    return _SHAPE_STRUCTS[ndim]


def _where(key: str) -> str:
    return f"key {key!r}: " if key else ""


def dtype_code(dtype, key: str = "") -> int:
    """Wire code of a numpy dtype; raises TensorFormatError naming the valid choices."""
    dt = np.dtype(dtype)
    code = CODE_BY_NAME.get(dt.name)
    if code is None:
        raise TensorFormatError(
            f"{_where(key)}dtype {dt.name} is not supported; use one of {', '.join(DTYPE_NAMES)}"
        )
    if dt.itemsize > 1 and dt.byteorder == ">":
        raise TensorFormatError(
            f"{_where(key)}big-endian array; convert with a.astype(a.dtype.newbyteorder('<'))"
        )
    return code


def check_array(array: np.ndarray, key: str = "") -> int:
    """Validates an array for sending without a copy; returns its dtype code."""
    if not isinstance(array, np.ndarray):
        raise TensorFormatError(f"{_where(key)}expected a numpy.ndarray, got {type(array).__name__}")
    code = _CODE_BY_DTYPE.get(array.dtype) or dtype_code(array.dtype, key)
    if array.ndim > MAX_RANK:
        raise TensorFormatError(f"{_where(key)}rank {array.ndim} exceeds the maximum {MAX_RANK}")
    if not array.flags.c_contiguous:
        raise TensorFormatError(
            f"{_where(key)}array is not C-contiguous; pass numpy.ascontiguousarray(a)"
        )
    return code


def encode_header(array: np.ndarray, key: str = "") -> bytes:
    code = check_array(array, key)
    return _FIXED.pack(MAGIC, FORMAT_VERSION, code, array.ndim, 0) + _shape_struct(
        array.ndim).pack(*array.shape)


def encode(array: np.ndarray, key: str = "") -> bytes:
    """Header + data as one bytes object (one copy of the data)."""
    header = encode_header(array, key)
    return b"".join((header, memoryview(array).cast("B")))


def decode_header(value, key: str = "") -> Tuple[np.dtype, Tuple[int, ...], int]:
    """Parses the header of a value; returns (dtype, shape, header_bytes)."""
    view = memoryview(value)
    if len(view) < FIXED_HEADER_BYTES:
        raise TensorFormatError(
            f"{_where(key)}not a nekrs_ml tensor: value has {len(view)} bytes, "
            f"shorter than the {FIXED_HEADER_BYTES}-byte header"
        )
    magic, version, code, ndim, reserved = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise TensorFormatError(
            f"{_where(key)}not a nekrs_ml tensor (bad magic {bytes(magic)!r}, expected {MAGIC!r})"
        )
    if version != FORMAT_VERSION:
        raise TensorFormatError(
            f"{_where(key)}unsupported tensor format version {version} "
            f"(this library reads version {FORMAT_VERSION})"
        )
    dtype = DTYPE_BY_CODE.get(code)
    if dtype is None:
        raise TensorFormatError(f"{_where(key)}unknown dtype code {code} (valid: 1..{len(DTYPE_BY_CODE)})")
    if ndim > MAX_RANK:
        raise TensorFormatError(f"{_where(key)}rank {ndim} exceeds the maximum {MAX_RANK}")
    if reserved != 0:
        raise TensorFormatError(f"{_where(key)}reserved header byte is {reserved}, expected 0")
    header_bytes = FIXED_HEADER_BYTES + 8 * ndim
    if len(view) < header_bytes:
        raise TensorFormatError(
            f"{_where(key)}truncated tensor header: {len(view)} bytes, rank {ndim} needs {header_bytes}"
        )
    shape = _shape_struct(ndim).unpack_from(view, FIXED_HEADER_BYTES)
    return dtype, shape, header_bytes


def data_bytes(dtype: np.dtype, shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * dtype.itemsize


def describe(dtype: np.dtype, shape) -> str:
    return f"{dtype.name}[{', '.join(str(d) for d in shape)}]"


def decode(value, key: str = "") -> np.ndarray:
    """Value -> array. Zero-copy: the array views ``value`` (read-only for bytes)."""
    dtype, shape, header_bytes = decode_header(value, key)
    expected = header_bytes + data_bytes(dtype, shape)
    if len(value) != expected:
        raise TensorFormatError(
            f"{_where(key)}value has {len(value)} bytes but its header {describe(dtype, shape)} "
            f"needs {expected} ({'truncated' if len(value) < expected else 'trailing bytes'})"
        )
    return np.frombuffer(value, dtype=dtype, offset=header_bytes).reshape(shape)
