"""The C++ tests (tests/support/cpp, ctest) built against the installed package through
find_package(nekrs_ml) with the directory `nekrs-ml config --cmake-dir` prints — the way a
NekRS case links libnekrsml."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "support" / "cpp"


def nekrs_ml_config(flag: str) -> str:
    return subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "config", flag], check=True,
                          capture_output=True, text=True, cwd="/tmp").stdout.strip()


@pytest.fixture(scope="module")
def cpp_tests(tmp_path_factory):
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("cpp-build")
    subprocess.run(["cmake", "-S", str(SOURCE), "-B", str(build),
                    f"-Dnekrs_ml_DIR={nekrs_ml_config('--cmake-dir')}"],
                   check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True, text=True)
    return build


def test_config_prints_existing_paths():
    include_flag = nekrs_ml_config("--includes")
    assert include_flag.startswith("-I")
    assert (Path(include_flag[2:]) / "nekrs_ml" / "client.hpp").exists()
    libs = nekrs_ml_config("--libs").split()
    assert "-lnekrsml" in libs and any((Path(f[2:]) / "libnekrsml.so").exists() for f in libs if f.startswith("-L"))
    assert (Path(nekrs_ml_config("--cmake-dir")) / "nekrs_mlConfig.cmake").exists()


def test_cpp_client_against_each_server(cpp_tests, server):
    env = dict(os.environ, **server.orchestrator.info(server.dir)["env"])
    proc = subprocess.run(["ctest", "--test-dir", str(cpp_tests), "--output-on-failure"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "100% tests passed" in proc.stdout
    assert "Skipped" not in proc.stdout and "Not Run" not in proc.stdout


def test_one_version_everywhere(cpp_tests):
    """pyproject.toml is the only place the version is written."""
    import nekrs_ml
    from nekrs_ml import _core

    pyproject = (SOURCE.parents[2] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    cpp = subprocess.run([str(cpp_tests / "print_version")], check=True, capture_output=True,
                         text=True).stdout.split()
    assert cpp == [version, version, version]  # header, library, CMake package
    assert nekrs_ml.__version__ == _core.__version__ == _core.header_version == version
    shown = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "--version"], check=True,
                           capture_output=True, text=True, cwd="/tmp").stdout
    assert shown.strip() == f"nekrs_ml {version}"
