"""The wire contracts shared with the C++ core, the C API, the Fortran module and the Redis module:
one table, ``protocol.tsv`` beside this file (CMake generates the C and Fortran constants from
the same table). Dtype codes, tensor-header constants, key-schema constants and the names of the
environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, NamedTuple, Tuple, Union

TABLE = Path(__file__).with_name("protocol.tsv")


class DType(NamedTuple):
    name: str  # numpy's name, e.g. "float32"
    code: int  # the wire code
    size: int  # item size in bytes
    redisai: str  # the RedisAI spelling (nkml_ai), e.g. "FLOAT"
    c_api: bool  # named by nekrs_ml.h and nekrs_ml.f90
    description: str


def _value(text: str) -> Union[int, str]:
    return int(text) if text.isdigit() else text


def _read() -> Tuple[Tuple[DType, ...], Dict[str, Dict[str, Union[int, str]]]]:
    dtypes = []
    constants: Dict[str, Dict[str, Union[int, str]]] = {"tensor": {}, "key": {}, "env": {}}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        kind, name, value, size, redisai, c_api, description = line.split("\t")
        if kind == "dtype":
            dtypes.append(DType(name, int(value), int(size), redisai, c_api == "1", description))
        else:
            constants[kind][name] = _value(value)
    return tuple(dtypes), constants


DTYPES, _CONSTANTS = _read()
#: tensor header: magic, format_version, max_rank, fixed_header_bytes
TENSOR = _CONSTANTS["tensor"]
#: key schema: flow_stats_retained, default_namespace
KEY = _CONSTANTS["key"]
#: environment variable names by role: mode, addresses, password_file, run_dir, namespace, ...
ENV: Dict[str, str] = {name: str(value) for name, value in _CONSTANTS["env"].items()}
