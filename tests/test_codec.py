"""The Python codec and the C++ codec write and read the same bytes."""

import numpy as np
import pytest

from nekrs_ml import _core, codec
from nekrs_ml.errors import TensorFormatError

DTYPES = ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16"]
SHAPES = [(), (7,), (2, 3, 4, 5)]


def sample(dtype: str, shape) -> np.ndarray:
    rng = np.random.default_rng(abs(hash((dtype, shape))) % 2**32)
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    if dtype.startswith("float"):
        return np.asarray(rng.standard_normal(shape).astype(dtype) * 1e3)
    return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_python_and_cpp_encode_identically(dtype, shape):
    array = sample(dtype, shape)
    encoded = codec.encode(array)
    assert encoded == _core.encode_tensor(array)
    for decoded in (codec.decode(encoded), _core.decode_tensor(encoded)):
        assert decoded.dtype == array.dtype and decoded.shape == array.shape
        np.testing.assert_array_equal(decoded, array)


def test_header_layout_is_as_documented():
    encoded = codec.encode(np.arange(6, dtype="<f4").reshape(2, 3))
    assert encoded[:4] == b"NKML" and encoded[4] == 1 and encoded[5] == 1
    assert encoded[6] == 2 and encoded[7] == 0
    assert int.from_bytes(encoded[8:16], "little") == 2
    assert int.from_bytes(encoded[16:24], "little") == 3
    assert np.frombuffer(encoded[24:], "<f4").tolist() == [0, 1, 2, 3, 4, 5]


def bad_values():
    good = codec.encode(np.arange(4, dtype="f8"))
    return {
        "magic": (b"XXXX" + good[4:], "bad magic"),
        "version": (good[:4] + bytes([9]) + good[5:], "version 9"),
        "dtype": (good[:5] + bytes([42]) + good[6:], "dtype code 42"),
        "truncated-data": (good[:-3], "truncated"),
        "truncated-header": (good[:12], "header"),
        "trailing": (good + b"\0", "trailing"),
        "too-short": (b"hello", "not a nekrs_ml tensor"),
    }


@pytest.mark.parametrize("case", list(bad_values()))
def test_bad_values_are_refused_by_both_codecs(case):
    value, words = bad_values()[case]
    with pytest.raises(TensorFormatError, match=words):
        codec.decode(value, key="k1")
    with pytest.raises(TensorFormatError, match="k1"):
        _core.decode_tensor(value, "k1")


def test_unsupported_dtype_and_layout_are_refused():
    with pytest.raises(TensorFormatError, match="complex128.*float32"):
        codec.encode(np.zeros(2, dtype=complex), key="k")
    with pytest.raises(TensorFormatError, match="C-contiguous"):
        codec.encode(np.zeros((4, 4), dtype="f4")[:, ::2], key="k")
    with pytest.raises(TensorFormatError, match="complex128"):
        _core.encode_tensor(np.zeros(2, dtype=complex))
