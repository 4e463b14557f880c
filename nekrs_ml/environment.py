"""Environment variables through which the orchestrator tells every child process where the
database is (documented in docs/protocol.md). Both clients read the same variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from . import protocol
from .errors import ConfigError

# The names come from protocol.tsv, which the C++ client (udf/src/env.cpp) reads too.
MODE = protocol.ENV["mode"]  # single | colocated | cluster
ADDRESSES = protocol.ENV["addresses"]  # comma-separated host:port or unix:PATH
PASSWORD_FILE = protocol.ENV["password_file"]  # file holding the password
RUN_DIR = protocol.ENV["run_dir"]  # the orchestrator's run directory
NAMESPACE = protocol.ENV["namespace"]  # key prefix of this run (docs/protocol.md)
# key prefix of the model registry and the model workers, when several solvers (an ensemble's
# members, each in its own NAMESPACE) share them; unset: NAMESPACE
MODEL_NAMESPACE = protocol.ENV["model_namespace"]
TIMEOUT = protocol.ENV["timeout"]  # per-call timeout of the clients, seconds

MODES = ("single", "colocated", "cluster")
DEFAULT_NAMESPACE = protocol.KEY["default_namespace"]


def resolve_namespace(option: Optional[str] = None, par_value: Optional[str] = None,
                      env: Optional[Mapping[str, str]] = None) -> str:
    """The key prefix of a run, for every part alike: the command-line option, else
    $NEKRS_ML_NAMESPACE (what the orchestrator exported, so every part of a run agrees), else
    the case's ``namespace``, else "nkml"."""
    env = os.environ if env is None else env
    sources = (("--namespace", option), (f"${NAMESPACE}", env.get(NAMESPACE)),
               ("[NEKRS_ML] namespace", par_value))
    for source, value in sources:
        if value:
            return check_namespace(value, source)
    return DEFAULT_NAMESPACE


def resolve_model_namespace(namespace: str, option: Optional[str] = None,
                            env: Optional[Mapping[str, str]] = None) -> str:
    """The key prefix of the model registry and the model workers a solver in ``namespace``
    uses: the option, else $NEKRS_ML_MODEL_NAMESPACE, else ``namespace`` itself."""
    env = os.environ if env is None else env
    sources = (("model_namespace", option), (f"${MODEL_NAMESPACE}", env.get(MODEL_NAMESPACE)))
    for source, value in sources:
        if value:
            return check_namespace(value, source)
    return namespace


def check_namespace(namespace: str, source: str = "namespace") -> str:
    if any(c in namespace for c in "{}:"):
        raise ConfigError(f"{source} = {namespace!r} is not a valid namespace: use a non-empty "
                          "name without '{', '}' or ':'")
    return namespace


def export(mode: str, addresses: List[str], password_file: str, run_dir: str,
           namespace: str = "nkml", smartredis: bool = False,
           model_namespace: Optional[str] = None) -> Dict[str, str]:
    """The variables a child process needs, as a dict to merge into its environment; with
    ``smartredis`` also the two SmartRedis clients read (docs/smartredis.md); with
    ``model_namespace`` (a solver of an ensemble) where its models are served."""
    env = {
        MODE: mode,
        ADDRESSES: ",".join(addresses),
        PASSWORD_FILE: str(password_file),
        RUN_DIR: str(run_dir),
        NAMESPACE: namespace,
    }
    if model_namespace:
        env[MODEL_NAMESPACE] = check_namespace(model_namespace, "model_namespace")
    if smartredis and addresses:
        first = addresses[0]
        env["SSDB"] = "unix://" + first[len("unix:"):] if first.startswith("unix:") else first
        env["SR_DB_TYPE"] = "Clustered" if mode == "cluster" else "Standalone"
    return env


def read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path!r} ({PASSWORD_FILE}): {exc.strerror}") from None


def node_names() -> List[str]:
    full = socket.gethostname()
    return [full.split(".")[0], full]


def colocated_address(addresses: List[str]) -> str:
    """The address of this node's server: sockets live at <run_dir>/<hostname>/redis.sock."""
    names = node_names()
    for address in addresses:
        if address.startswith("unix:") and Path(address[5:]).parent.name in names:
            return address
    raise ConfigError(
        f"no server of this node ({names[0]}) among {ADDRESSES}={','.join(addresses)}; in colocated "
        "mode start one server per node with `nekrs-ml db start --mode colocated`"
    )


def connection_options(env: Optional[Mapping[str, str]] = None) -> dict:
    """Client(...) keyword arguments from the orchestrator's variables."""
    env = os.environ if env is None else env
    raw = env.get(ADDRESSES, "").strip()
    if not raw:
        raise ConfigError(
            f"{ADDRESSES} is not set; start the orchestrator with `nekrs-ml db start` "
            "or run under `nekrs-ml run`"
        )
    addresses = [a.strip() for a in raw.split(",") if a.strip()]
    mode = env.get(MODE, "single")
    if mode not in MODES:
        raise ConfigError(f"{MODE}={mode!r} is not valid; use one of {', '.join(MODES)}")
    if mode == "colocated":
        addresses = [colocated_address(addresses)]
    password = read_password(env[PASSWORD_FILE]) if env.get(PASSWORD_FILE) else None
    options = {"addresses": addresses, "password": password, "cluster": mode == "cluster"}
    if env.get(TIMEOUT):
        try:
            options["timeout"] = float(env[TIMEOUT])
        except ValueError:
            raise ConfigError(f"{TIMEOUT}={env[TIMEOUT]!r} is not a number of seconds") from None
    return options


def package_dir() -> Path:
    """The installed package's directory (its lib/, include/ and CMake files)."""
    return Path(__file__).resolve().parent


def udf_build_env() -> dict:
    """What a NekRS case's udf.cmake reads to find nekrs_ml (docs/nekrs.md)."""
    cmake_dir = package_dir() / "lib" / "cmake" / "nekrs_ml"
    return {"NEKRS_ML_UDF_CMAKE": str(cmake_dir / "udf.cmake"), "NEKRS_ML_CMAKE_DIR": str(cmake_dir)}
