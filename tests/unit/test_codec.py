"""The Python codec and the C++ codec write and read the same bytes."""

import numpy as np
import pytest

from nekrs_ml import _core, codec
from nekrs_ml.errors import TensorFormatError
from support.samples import DTYPES, SHAPES, bad_values, sample

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
