"""Shared fixtures: real redis-server processes on free loopback ports / Unix sockets, started
through the orchestrator and always stopped (also when a test fails)."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


def _import_built_package() -> str:
    """The tests run against the installed package. `python -m pytest` in the checkout puts the
    checkout first on sys.path, and its nekrs_ml/ has no compiled _core: use the installed
    package instead. Returns what is wrong when there is none ("" when all is well)."""
    try:
        importlib.import_module("nekrs_ml._core")
        return ""
    except ImportError:
        pass
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != CHECKOUT]
    for name in [name for name in sys.modules if name == "nekrs_ml" or name.startswith("nekrs_ml.")]:
        del sys.modules[name]
    try:
        importlib.import_module("nekrs_ml._core")
    except ImportError as exc:
        return (f"nekrs_ml._core is not built ({exc}): run `pip install .` (or `bash "
                "install.sh`) in the checkout first; the tests use the installed package")
    return ""


BUILD_PROBLEM = _import_built_package()


def pytest_configure(config):
    if BUILD_PROBLEM:
        pytest.exit(BUILD_PROBLEM, returncode=4)


# Tiers are directories; each test gets its tier's marker, and `slow` where it builds code, starts
# MPI jobs or runs a whole workflow, so `pytest -m "not slow"` is the quick loop.
TIERS = ("unit", "integration", "workflow", "nekrs", "multinode")
SLOW_TIERS = {"workflow", "nekrs", "multinode"}
SLOW_MODULES = {
    "test_bench.py",        # every benchmark once, with its servers and MPI ranks
    "test_c_api.py",        # compiles a Fortran program
    "test_cpp.py",          # builds the C++ tests with CMake
    "test_inprocess.py",    # AOTInductor compilations
    "test_smartredis.py",   # SmartRedis's own environment, workers on three deployments
    "test_train.py",        # torch DDP trainers under mpiexec
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        tier = path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier in SLOW_TIERS or path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


from nekrs_ml.orchestrator import Orchestrator  # noqa: E402 - after the search above
from support.paths import short_tmpdir  # noqa: E402

# Subprocesses started from the source tree must import the installed package, not ./nekrs_ml.
os.environ["PYTHONSAFEPATH"] = "1"
# mpiexec as root in containers/CI; oversubscription on small machines (tests only).
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
os.environ.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")

# Fixtures shared across tiers.
pytest_plugins = ["support.smartredis"]

SERVER_KINDS = ("tcp", "unix", "cluster")


class RunningServer:
    def __init__(self, kind: str):
        self.kind = kind
        self.dir = short_tmpdir(f"nkml-{kind}-")
        mode = "cluster" if kind == "cluster" else "single"
        transport = "unix" if kind == "unix" else "tcp"
        self.orchestrator = Orchestrator(self.dir, mode=mode, transport=transport, shards=3,
                                         maxmemory="512mb")
        self.info = self.orchestrator.start()
        self.addresses = self.info["addresses"]
        self.password = self.orchestrator.password
        self.cluster = kind == "cluster"

    def client_args(self) -> dict:
        return dict(addresses=self.addresses, password=self.password, cluster=self.cluster)

    def stop(self) -> None:
        try:
            self.orchestrator.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(request):
    """A running orchestrator of each kind: single TCP, single Unix socket, 3-shard cluster."""
    running = RunningServer(request.param)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def tcp_server():
    running = RunningServer("tcp")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def run_dir():
    path = short_tmpdir("nkml-run-")
    try:
        yield path
    finally:
        # servers started in the dir itself, or by a `nekrs-ml run` killed mid-run (run_dir/db)
        for directory in (path, os.path.join(path, "db")):
            Orchestrator.stop_dir(directory)
        shutil.rmtree(path, ignore_errors=True)
