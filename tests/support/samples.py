"""Arrays of every dtype and shape the codecs carry, and values they must refuse."""

import numpy as np

from nekrs_ml import codec


DTYPES = ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16"]


SHAPES = [(), (7,), (2, 3, 4, 5)]


def sample(dtype: str, shape) -> np.ndarray:
    rng = np.random.default_rng(abs(hash((dtype, shape))) % 2**32)
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    if dtype.startswith("float"):
        return np.asarray(rng.standard_normal(shape).astype(dtype) * 1e3)
    return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True))


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
