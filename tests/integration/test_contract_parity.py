"""The wire contracts are one table, nekrs_ml/protocol.tsv: the C++ library, the generated C and
Fortran headers and the Python modules hold what it says, and what is still written in two
languages (the key formats, the Redis module's tensor reader) gives the same answer in both."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import nekrs_ml
from nekrs_ml import _core, codec, environment, keys, protocol
from nekrs_ml.errors import ConfigError

INCLUDE = Path(nekrs_ml.__file__).resolve().parent / "include"


# --- the table and what is generated from it ---------------------------------------------------
def test_the_table_has_the_eight_documented_dtypes():
    assert [(d.name, d.code, d.size) for d in protocol.DTYPES] == [
        ("float32", 1, 4), ("float64", 2, 8), ("int8", 3, 1), ("int16", 4, 2),
        ("int32", 5, 4), ("int64", 6, 8), ("uint8", 7, 1), ("uint16", 8, 2)]
    assert protocol.TENSOR == {"magic": "NKML", "format_version": 1, "max_rank": 8,
                               "fixed_header_bytes": 8}


def test_the_documented_dtype_table_is_the_table():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (\d+) \|$", doc, re.M)
    assert [(name, int(code), int(size)) for code, name, size in rows] == [
        (d.name, d.code, d.size) for d in protocol.DTYPES]


def test_the_library_was_built_from_the_table():
    assert _core.protocol_dtypes() == [(d.name, d.code, d.size) for d in protocol.DTYPES]
    assert _core.protocol_constants() == {**protocol.TENSOR, **protocol.KEY}


def test_the_python_codec_reads_the_table():
    assert {code: (dt.name, dt.itemsize) for code, dt in codec.DTYPE_BY_CODE.items()} == {
        d.code: (d.name, d.size) for d in protocol.DTYPES}
    assert (codec.MAGIC, codec.FORMAT_VERSION, codec.MAX_RANK, codec.FIXED_HEADER_BYTES) == (
        b"NKML", 1, 8, 8)


def test_the_c_and_fortran_headers_name_the_c_api_dtypes():
    header = (INCLUDE / "nekrs_ml.h").read_text()
    fortran = (INCLUDE / "nekrs_ml.f90").read_text()
    c_defines = dict(re.findall(r"^#define (NKML_\w+) (\d+)", header, re.M))
    for dtype in protocol.DTYPES:
        name = f"NKML_{dtype.name.upper()}"
        if dtype.c_api:
            assert c_defines[name] == str(dtype.code)
            assert f"{name} = {dtype.code}" in fortran
        else:
            assert name not in c_defines and name not in fortran
    assert c_defines["NKML_MAX_DIMS"] == str(protocol.TENSOR["max_rank"])
    generated = (INCLUDE / "nekrs_ml" / "protocol.h").read_text()
    for dtype in protocol.DTYPES:
        assert f"X({dtype.name}, {dtype.code}, {dtype.size}, {dtype.redisai}," in generated


# --- key schema: keys.py and keys.hpp ----------------------------------------------------------
SAMPLE_ARGUMENTS = {"ns": "run-1", "rank": 12, "seq": 345, "worker": 3, "model": "wall_model",
                    "name": "wall_model", "version": 7, "graph": "forward", "device": "cuda",
                    "torch_version": "2.13.0"}


def test_python_and_cpp_write_the_same_keys():
    cpp_functions = [name for name in dir(_core.keys) if callable(getattr(_core.keys, name))
                     and not name.startswith("_")]
    assert len(cpp_functions) > 20
    assert {"solver_case", "model_meta"} <= set(cpp_functions)
    for name in cpp_functions:
        python = getattr(keys, name)
        # optional arguments (a named trainer's keys) have no C++ counterpart: their default
        arguments = [SAMPLE_ARGUMENTS[p.name] for p in inspect.signature(python).parameters.values()
                     if p.default is inspect.Parameter.empty]
        assert getattr(_core.keys, name)(*arguments) == python(*arguments), name
    assert _core.keys.FLOW_STATS_RETAINED == keys.FLOW_STATS_RETAINED


# --- environment variables: environment.py and env.cpp -----------------------------------------
def test_environment_names_come_from_the_table():
    assert (environment.MODE, environment.ADDRESSES, environment.PASSWORD_FILE,
            environment.RUN_DIR, environment.NAMESPACE, environment.MODEL_NAMESPACE,
            environment.TIMEOUT) == tuple(
        protocol.ENV[k] for k in ("mode", "addresses", "password_file", "run_dir", "namespace",
                                  "model_namespace", "timeout"))
    assert environment.DEFAULT_NAMESPACE == protocol.KEY["default_namespace"]


def test_the_model_namespace_defaults_to_the_namespace():
    name = environment.MODEL_NAMESPACE
    assert environment.resolve_model_namespace("run.a", env={}) == "run.a"
    assert environment.resolve_model_namespace("run.a", env={name: "run"}) == "run"
    assert environment.resolve_model_namespace("run.a", "shared", env={name: "run"}) == "shared"
    with pytest.raises(ConfigError, match=name):
        environment.resolve_model_namespace("run.a", env={name: "run:x"})
    exported = environment.export("single", ["127.0.0.1:1"], "", "/tmp", "run.a",
                                  model_namespace="run")
    assert exported[environment.NAMESPACE] == "run.a" and exported[name] == "run"
    assert name not in environment.export("single", ["127.0.0.1:1"], "", "/tmp", "run.a")


def test_the_cpp_client_reads_the_same_variables(monkeypatch, tmp_path):
    monkeypatch.delenv(environment.ADDRESSES, raising=False)
    with pytest.raises(ConfigError, match=environment.ADDRESSES):
        _core.Client.from_env()
    monkeypatch.setenv(environment.ADDRESSES, "127.0.0.1:1")
    monkeypatch.setenv(environment.MODE, "bogus")
    with pytest.raises(ConfigError, match=f"{environment.MODE} is 'bogus'"):
        _core.Client.from_env()
    monkeypatch.setenv(environment.MODE, "single")
    monkeypatch.setenv(environment.TIMEOUT, "soon")
    with pytest.raises(ConfigError, match=environment.TIMEOUT):
        _core.Client.from_env()
    monkeypatch.delenv(environment.TIMEOUT)
    monkeypatch.setenv(environment.PASSWORD_FILE, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=environment.PASSWORD_FILE):
        _core.Client.from_env()


# --- tensor format: codec.py and the Redis module nkml_ai.c ------------------------------------
def sample(dtype: protocol.DType) -> np.ndarray:
    values = np.array([[0, 1, 2], [3, 100, 7]])
    if dtype.name.startswith(("int", "float")):
        values[0, 0] = -5
    return values.astype(dtype.name)


@pytest.fixture(scope="module")
def compat_server():
    from support.smartredis import CompatRun

    run = CompatRun("single", workers=False)
    try:
        with run.node(run.addresses[0]) as conn:
            yield conn
    finally:
        run.stop()


@pytest.mark.parametrize("dtype", protocol.DTYPES, ids=lambda d: d.name)
def test_the_redis_module_reads_and_writes_every_dtype_of_the_codec(compat_server, dtype):
    conn, array = compat_server, sample(dtype)
    conn.set(f"py-{dtype.name}", codec.encode(array))
    reply = conn.execute_command("AI.TENSORGET", f"py-{dtype.name}", "META", "VALUES")
    assert reply[:4] == [b"dtype", dtype.redisai.encode(), b"shape", list(array.shape)]
    assert [float(v) for v in reply[5]] == array.ravel().astype(float).tolist()
    conn.execute_command("AI.TENSORSET", f"sr-{dtype.name}", dtype.redisai, *array.shape,
                         "VALUES", *array.ravel().tolist())
    assert conn.get(f"sr-{dtype.name}") == codec.encode(array)
    blob = conn.execute_command("AI.TENSORGET", f"py-{dtype.name}", "BLOB")
    assert blob == array.tobytes()
