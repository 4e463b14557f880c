"""The ground floor for processes and ports: what the orchestrator, the launcher, the watchdog
and the trainer all need, importing nothing of nekrs_ml but its errors (so no import circle
runs through here)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
from pathlib import Path
from typing import Callable, Optional

from .errors import OrchestratorError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
CLUSTER_BUS_OFFSET = 10000  # Redis Cluster's bus port: the client port + 10000


def process_start_time(pid: int) -> Optional[int]:
    """When ``pid`` started (clock ticks since boot); None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def process_state(pid: int) -> str:
    """The state letter of proc(5) (R, S, T, Z, ...); "" when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets ``sig`` from the kernel when this process dies."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls into it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    return preexec


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", with_bus: bool = False, taken: Optional[set] = None) -> int:
    """A free TCP port (and, for cluster nodes, a free bus port at +10000); never Redis's
    default ports, which a user's own server may be about to take."""
    taken = taken or set()
    for _ in range(200):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port in taken or port in (6379, 16379):
            continue
        if with_bus and (port + CLUSTER_BUS_OFFSET > 65535
                         or not port_is_free(host, port + CLUSTER_BUS_OFFSET)):
            continue
        return port
    raise OrchestratorError(f"no free TCP port found on {host}")
