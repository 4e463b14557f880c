"""The C API (nekrs_ml.h) through cffi on the installed libnekrsml, and the Fortran module
(nekrs_ml.f90) built with gfortran into a program, against real servers of every kind."""

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import nekrs_ml
from nekrs_ml import keys
from nekrs_ml.client import Client
from nekrs_ml.models.deploy import deploy
from support.workers import Worker, mlp

cffi = pytest.importorskip("cffi", reason="the C API tests drive libnekrsml through cffi")

PACKAGE = Path(nekrs_ml.__file__).resolve().parent
HEADER = PACKAGE / "include" / "nekrs_ml.h"
LIBRARY = PACKAGE / "lib" / "libnekrsml.so"


def declarations(header: str) -> str:
    """The header as cffi's cdef takes it: its constants and declarations, no preprocessor
    guards or C++ linkage lines."""
    kept = []
    for line in header.splitlines():
        stripped = line.strip()
        if stripped.startswith("#define NKML_"):
            kept.append(re.sub(r"/\*.*\*/", "", stripped))
        elif stripped.startswith("#") or stripped in ('extern "C" {', "}"):
            continue
        else:
            kept.append(line)
    return "\n".join(kept)


@pytest.fixture(scope="module")
def api():
    ffi = cffi.FFI()
    ffi.cdef(declarations(HEADER.read_text()))
    return ffi, ffi.dlopen(str(LIBRARY))


@pytest.fixture
def connected(api, server):
    """(ffi, lib, client handle, python client, namespace) on each server kind."""
    ffi, lib = api
    handle = ffi.new("nkml_client**")
    status = lib.nkml_client_connect(",".join(server.addresses).encode(),
                                     (server.password or "").encode(), int(server.cluster), handle)
    assert status == lib.NKML_OK, ffi.string(lib.nkml_last_error())
    python = Client(**server.client_args())
    try:
        yield ffi, lib, handle[0], python, f"c{uuid.uuid4().hex[:8]}"
    finally:
        lib.nkml_client_free(handle[0])
        python.close()


def deploy_mlp(python, ns: str, seed: int, tmp_path):
    """A 3 -> 64 -> 64 -> 2 model deployed as "m" (torch.export program); returns the module."""
    model = mlp(seed).eval()
    program = torch.export.export(model, (torch.zeros(4, 3),),
                                  dynamic_shapes=({0: torch.export.Dim("points")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    deploy(python, ns, "m", tmp_path / "m.pt2")
    return model


def error(ffi, lib) -> str:
    return ffi.string(lib.nkml_last_error()).decode()


def test_tensors_written_in_c_read_in_python_and_back(connected):
    ffi, lib, client, python, ns = connected
    data = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    shape = ffi.new("int64_t[]", [3, 4])
    key = f"{ns}:from_c"
    assert lib.nkml_put_tensor(client, key.encode(), lib.NKML_FLOAT64, 2, shape,
                               ffi.cast("void*", data.ctypes.data)) == lib.NKML_OK
    np.testing.assert_array_equal(python.get_tensor(key), data)

    python.put_tensor(f"{ns}:from_py", np.arange(6, dtype=np.int32).reshape(2, 3))
    dtype, ndim, dims = ffi.new("int*"), ffi.new("int*"), ffi.new("int64_t[8]")
    assert lib.nkml_tensor_info(client, f"{ns}:from_py".encode(), dtype, ndim, dims) == lib.NKML_OK
    assert (dtype[0], ndim[0], list(dims)[:2]) == (lib.NKML_INT32, 2, [2, 3])
    out = np.zeros((2, 3), np.int32)
    assert lib.nkml_get_tensor(client, f"{ns}:from_py".encode(), lib.NKML_INT32,
                               ffi.cast("void*", out.ctypes.data), out.nbytes) == lib.NKML_OK
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))
    exists = ffi.new("int*")
    assert lib.nkml_key_exists(client, key.encode(), exists) == lib.NKML_OK and exists[0] == 1
    assert lib.nkml_delete(client, key.encode()) == lib.NKML_OK
    assert lib.nkml_key_exists(client, key.encode(), exists) == lib.NKML_OK and exists[0] == 0


def test_failures_are_status_codes_with_messages(connected, api, server):
    ffi, lib, client, python, ns = connected
    out = np.zeros(4, np.float32)
    buffer = ffi.cast("void*", out.ctypes.data)
    assert lib.nkml_get_tensor(client, f"{ns}:nothing".encode(), lib.NKML_FLOAT32, buffer,
                               out.nbytes) == lib.NKML_E_NOT_FOUND
    assert f"{ns}:nothing" in error(ffi, lib)
    python.put_tensor(f"{ns}:f64", np.zeros(4))
    assert lib.nkml_get_tensor(client, f"{ns}:f64".encode(), lib.NKML_FLOAT32, buffer,
                               out.nbytes) == lib.NKML_E_FORMAT
    assert "float64" in error(ffi, lib)
    assert lib.nkml_put_tensor(client, ffi.NULL, lib.NKML_FLOAT32, 1,
                               ffi.new("int64_t[]", [4]), buffer) == lib.NKML_E_CONFIG
    assert error(ffi, lib) == "key is NULL"
    assert lib.nkml_put_tensor(client, b"k", 42, 1, ffi.new("int64_t[]", [4]),
                               buffer) == lib.NKML_E_CONFIG
    assert "dtype 42" in error(ffi, lib) and "NKML_FLOAT32" in error(ffi, lib)
    assert lib.nkml_key_exists(client, b"k", ffi.new("int*")) == lib.NKML_OK
    assert error(ffi, lib) == ""  # success clears it
    handle = ffi.new("nkml_client**")
    if server.password:
        assert lib.nkml_client_connect(",".join(server.addresses).encode(), b"wrong",
                                       int(server.cluster), handle) == lib.NKML_E_CONNECTION
        assert handle[0] == ffi.NULL
    assert lib.nkml_client_connect(b"127.0.0.1:1", ffi.NULL, 0, handle) == lib.NKML_E_CONNECTION
    assert "127.0.0.1:1" in error(ffi, lib)


def test_timeouts_out_of_range_are_refused_naming_the_function_and_the_limit(api, tcp_server):
    """A timeout the socket cannot take (1e13 s overflows the microseconds) is refused, and the
    client keeps the timeout it had: its calls still work."""
    ffi, lib = api
    handle = ffi.new("nkml_client**")
    assert lib.nkml_client_connect(",".join(tcp_server.addresses).encode(),
                                   tcp_server.password.encode(), 0, handle) == lib.NKML_OK
    client = handle[0]
    try:
        for seconds in (1e13, 1e6 * 1.5, float("inf"), float("nan"), -1.0, 0.0):
            assert lib.nkml_client_set_timeout(client, seconds) == lib.NKML_E_CONFIG, seconds
            message = error(ffi, lib)
            assert message.startswith("nkml_client_set_timeout: seconds "), message
            assert "greater than 0 and at most 1e+06" in message, message
        assert lib.nkml_client_set_timeout(client, 1e6) == lib.NKML_OK
        assert lib.nkml_client_set_timeout(client, 5.0) == lib.NKML_OK
        exists = ffi.new("int*")
        assert lib.nkml_key_exists(client, b"nothing", exists) == lib.NKML_OK, error(ffi, lib)
        inference = ffi.new("nkml_inference**")
        assert lib.nkml_inference_open(client, b"nkml", 0, 1, 1e13, inference) == lib.NKML_E_CONFIG
        assert error(ffi, lib).startswith("nkml_inference_open: timeout 1e+13 s is not valid")
        assert inference[0] == ffi.NULL
    finally:
        lib.nkml_client_free(client)


def test_training_stream_and_control_flags(connected):
    ffi, lib, client, python, ns = connected
    stream = ffi.new("nkml_stream**")
    assert lib.nkml_stream_open(client, ns.encode(), 3, 20, stream) == lib.NKML_OK
    inputs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    targets = np.random.default_rng(1).normal(size=(50, 2)).astype(np.float32)
    written = ffi.new("int*")
    for step in (10, 20):
        assert lib.nkml_stream_put(stream[0], step, step * 0.1, lib.NKML_FLOAT32, 50, 3,
                                   ffi.cast("void*", inputs.ctypes.data), 2,
                                   ffi.cast("void*", targets.ctypes.data), written) == lib.NKML_OK
        assert written[0] == 1
    announced = python.list_range(keys.snapshot_index(ns, 3))
    assert [entry.split()[1] for entry in announced] == [b"10", b"20"]
    seq = int(announced[-1].split()[0])
    np.testing.assert_array_equal(python.get_tensor(keys.snapshot_inputs(ns, 3, seq)), inputs)
    np.testing.assert_array_equal(python.get_tensor(keys.snapshot_targets(ns, 3, seq)), targets)
    assert lib.nkml_stream_put(stream[0], 30, 3.0, lib.NKML_FLOAT32, 50, 3,
                               ffi.cast("void*", inputs.ctypes.data), 2, ffi.NULL,
                               written) == lib.NKML_E_CONFIG
    lib.nkml_stream_free(stream[0])

    requested = ffi.new("int*")
    assert lib.nkml_stop_requested(client, ns.encode(), requested) == lib.NKML_OK
    assert requested[0] == 0
    python.set_string(keys.trainer_stop(ns), "1")
    assert lib.nkml_stop_requested(client, ns.encode(), requested) == lib.NKML_OK
    assert requested[0] == 1
    assert lib.nkml_mark_done(client, ns.encode()) == lib.NKML_OK
    assert python.exists(keys.solver_done(ns))


def test_inference_through_a_model_worker(connected, server, tmp_path):
    ffi, lib, client, python, ns = connected
    model = deploy_mlp(python, ns, 7, tmp_path)
    worker = Worker(server, ns)
    try:
        inference = ffi.new("nkml_inference**")
        assert lib.nkml_inference_open(client, ns.encode(), 0, 1, 30.0, inference) == lib.NKML_OK
        x = np.random.default_rng(2).uniform(-1, 1, (100, 3)).astype(np.float32)
        y = np.zeros((100, 2), np.float32)
        version = ffi.new("uint64_t*")
        status = lib.nkml_inference_run(inference[0], b"m", 100, 3, ffi.cast("float*", x.ctypes.data),
                                        2, ffi.cast("float*", y.ctypes.data), version)
        assert status == lib.NKML_OK, error(ffi, lib)
        assert version[0] == 1
        with torch.inference_mode():
            np.testing.assert_allclose(y, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
        status = lib.nkml_inference_run(inference[0], b"absent", 100, 3,
                                        ffi.cast("float*", x.ctypes.data), 2,
                                        ffi.cast("float*", y.ctypes.data), version)
        assert status == lib.NKML_E_NOT_FOUND and "absent" in error(ffi, lib)
        lib.nkml_inference_free(inference[0])
    finally:
        worker.stop()


FORTRAN_PROGRAM = """
program stream_and_infer
  use, intrinsic :: iso_c_binding
  use nekrs_ml
  implicit none
  type(c_ptr) :: client, stream, inference
  real(c_float) :: inputs(3, 40), targets(2, 40), predictions(2, 40)
  integer(c_int64_t) :: version
  character(len=64) :: ns
  logical :: written, found
  integer :: i

  call get_environment_variable("TEST_NAMESPACE", ns)
  call check(nkml_client_from_env(client), "connect")
  do i = 1, 40
    inputs(:, i) = [real(i, c_float) / 40, 0.5_c_float, -0.25_c_float]
    targets(:, i) = [real(i, c_float), -real(i, c_float)]
  end do
  call check(nkml_stream_open(client, trim(ns), 1, 10, stream), "stream open")
  call check(nkml_stream_put(stream, 5, 0.5_c_double, inputs, targets, written), "stream put")
  if (.not. written) stop 3
  call check(nkml_inference_open(client, trim(ns), 1, 1, 30.0_c_double, inference), "open")
  call check(nkml_inference_run(inference, "m", inputs, predictions, version), "run")
  call check(nkml_put_tensor(client, trim(ns) // ":predictions", predictions), "put")
  call check(nkml_key_exists(client, trim(ns) // ":predictions", found), "exists")
  if (.not. found) stop 4
  ! a missing key: a status and a message, no crash
  if (nkml_get_tensor(client, trim(ns) // ":missing", predictions) /= NKML_E_NOT_FOUND) stop 5
  print '(a)', "message: " // nkml_last_error()
  print '(a, i0)', "version ", version
  call nkml_inference_free(inference)
  call nkml_stream_free(stream)
  call nkml_client_free(client)
contains
  subroutine check(status, what)
    integer(c_int), intent(in) :: status
    character(len=*), intent(in) :: what
    if (status /= NKML_OK) then
      print '(a)', what // " failed: " // nkml_last_error()
      stop 2
    end if
  end subroutine
end program
"""


@pytest.mark.skipif(shutil.which("gfortran") is None, reason="needs gfortran (apt-get install gfortran)")
def test_fortran_program_streams_and_infers(server, tmp_path):
    ns = f"f{uuid.uuid4().hex[:8]}"
    config = [sys.executable, "-m", "nekrs_ml.cli", "config"]
    module = subprocess.run(config + ["--fortran-module"], capture_output=True, text=True,
                            check=True).stdout.strip()
    libs = subprocess.run(config + ["--libs"], capture_output=True, text=True,
                          check=True).stdout.split()
    (tmp_path / "prog.f90").write_text(FORTRAN_PROGRAM)
    build = subprocess.run(["gfortran", "-std=f2008", "-Wall", "-o", "prog", module, "prog.f90",
                            *libs], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    python = Client(**server.client_args())
    model = deploy_mlp(python, ns, 8, tmp_path)
    worker = Worker(server, ns)
    try:
        env = {**os.environ, **server.info["env"], "TEST_NAMESPACE": ns}
        run = subprocess.run(["./prog"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        worker.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "version 1" in run.stdout and f"{ns}:missing" in run.stdout
    # Fortran's inputs(3, 40) is the C tensor [40, 3]: one row per point
    i = np.arange(1, 41, dtype=np.float32)
    inputs = np.stack([i / 40, np.full(40, 0.5, np.float32), np.full(40, -0.25, np.float32)], 1)
    announced = python.list_range(keys.snapshot_index(ns, 1))
    seq = int(announced[0].split()[0])
    np.testing.assert_array_equal(python.get_tensor(keys.snapshot_inputs(ns, 1, seq)), inputs)
    np.testing.assert_array_equal(python.get_tensor(keys.snapshot_targets(ns, 1, seq)),
                                  np.stack([i, -i], 1))
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(python.get_tensor(f"{ns}:predictions"), expected, rtol=1e-5,
                               atol=1e-6)
    python.close()
