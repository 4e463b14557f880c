"""nekrs_ml built by a toolchain that links the C++ runtime statically (as some HPC compiler
modules do: g++ specs adding -static-libstdc++ -static-libgcc), beside the libstdc++ of the
installed libtorch, and the in-process path run end to end with it: the stand-in solver's
Coupling loads libnekrsml_torch through the C boundary of nekrs_ml/inprocess_abi.h and applies
the model at every step. With C++ types crossing that boundary this build failed at the first
prediction (the two runtimes' stream locales mixed in the weights parser)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nekrs_ml
from support.runs import finish, no_servers_left, report, start_run, write_case

CHECKOUT = Path(__file__).resolve().parents[2]
STATIC_RUNTIME = "-static-libstdc++ -static-libgcc"


def _needed(library: Path) -> list:
    """The libraries `library` depends on (its DT_NEEDED entries)."""
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def _exported(library: Path) -> list:
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.split()]


@pytest.fixture(scope="module")
def static_runtime_package(tmp_path_factory):
    """The package built with the C++ runtime linked statically into every library, laid out as
    the installed one (Python sources from the installed package, binaries from this build)."""
    if shutil.which("cmake") is None or shutil.which("readelf") is None:
        pytest.skip("needs cmake and readelf (binutils)")
    root = tmp_path_factory.mktemp("static-runtime")
    build, prefix = root / "build", root / "prefix"
    import pybind11

    configure = subprocess.run(
        ["cmake", "-S", str(CHECKOUT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         "-DSKBUILD=ON", "-DNEKRS_ML_BUILD_PYTHON=ON", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}",
         f"-DCMAKE_SHARED_LINKER_FLAGS={STATIC_RUNTIME}",
         f"-DCMAKE_MODULE_LINKER_FLAGS={STATIC_RUNTIME}"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    compiled = subprocess.run(["cmake", "--build", str(build), "-j", jobs], capture_output=True,
                              text=True)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    installed = Path(nekrs_ml.__file__).parent
    shutil.copytree(installed, prefix / "nekrs_ml",
                    ignore=shutil.ignore_patterns("_core*", "lib", "__pycache__", "include"))
    subprocess.run(["cmake", "--install", str(build), "--prefix", str(prefix)], check=True,
                   capture_output=True)
    return prefix / "nekrs_ml", configure.stdout + configure.stderr


def test_configure_warns_and_no_runtime_symbol_leaves_a_library(static_runtime_package):
    package, configure_log = static_runtime_package
    assert "links the C++ runtime statically" in configure_log
    core = package / "lib" / "libnekrsml.so"
    backend = package / "lib" / "libnekrsml_torch.so"
    assert not [name for name in _needed(core) if "libstdc++" in name]  # linked statically
    assert not [name for name in _exported(core) if name.startswith(("_ZNSi", "_ZNSo", "_ZSt4cout"))]
    # the backend: the C entry points of inprocess_abi.h, nothing else; no link to libnekrsml
    assert sorted(_exported(backend)) == sorted(
        f"nkml_inprocess_{name}" for name in ("abi_version", "torch_version", "create", "destroy",
                                              "run", "refresh", "last_swap_seconds",
                                              "model_state", "last_error"))
    assert not [name for name in _needed(backend) if name.startswith("libnekrsml")]


def test_inprocess_inference_end_to_end_with_the_static_runtime(static_runtime_package, run_dir,
                                                                monkeypatch):
    package, _ = static_runtime_package
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    probe = subprocess.run([sys.executable, "-c", "import nekrs_ml; print(nekrs_ml.__file__)"],
                           capture_output=True, text=True, cwd=run_dir)
    assert probe.stdout.strip() == str(package / "__init__.py"), probe.stderr
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer", "inferenceBackend": "inprocess",
                                             "deployModel": f'"{_model_file(run_dir)}"'},
                                "REPRODUCER": {"steps": 40}})
    code, out = finish(start_run(case, run_dir), timeout=300)
    assert code == 0, out[-3000:]
    inference = report(run_dir)["inference"]
    assert inference["backend"] == "inprocess"
    assert inference["predicted_calls"] == inference["calls"] == 2 * 41, inference
    assert inference["fallbacks"] == 0 and inference["versions"] == [1]
    assert no_servers_left(run_dir)


def _model_file(directory: str) -> Path:
    """A small torch.export wall model file, as the trainer writes one."""
    import numpy as np
    import torch

    from nekrs_ml.train.model import Exporter, build_mlp, deployable, program_bytes

    torch.manual_seed(0)
    model = deployable(build_mlp(3, [16], 2), np.zeros(3), np.full(3, 0.5),
                       np.array([1e-3, 0.0]), np.array([2e-3, 1e-4]))
    path = Path(directory) / "wall_model.pt2"
    path.write_bytes(program_bytes(Exporter().program_for(model)))
    return path
