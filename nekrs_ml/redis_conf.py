"""The redis.conf of a run's server: what it says, and the checks that keep every value written
into it to what it should be (a value that could end a line or a quote is refused, not
escaped: a second line would be server configuration)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Dict, Optional

from .errors import OrchestratorError

SMARTREDIS_EXECUTE_TIMEOUT_MS = 60000  # longest an AI.MODELEXECUTE waits for a worker's answer
# A password is one token of these characters (ours are 64 hex digits).
PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9_+/=.~-]{16,512}")
MEMORY_PATTERN = re.compile(r"[0-9]{1,15}(?:[kmg]b?|b)?", re.IGNORECASE)


def conf_path(path, what: str = "path") -> str:
    """A path for redis.conf, where it is written in double quotes: refused (not escaped) when
    it holds a quote, a backslash or a control character."""
    text = str(path)
    if any(c in "\"'\\" or ord(c) < 32 or ord(c) == 127 for c in text):
        raise OrchestratorError(
            f"{what} {text!r} contains a quote, a backslash or a control character, which the "
            "server configuration cannot hold safely; choose a plainer run directory")
    return f'"{text}"'


def check_password(text: str, path) -> str:
    """The password file holds one token and nothing else (a second line would be server
    configuration once written into redis.conf)."""
    token = text[:-1] if text.endswith("\n") else text
    if not PASSWORD_PATTERN.fullmatch(token):
        raise OrchestratorError(
            f"password file {path} does not hold a single password of 16-512 characters "
            "[A-Za-z0-9_+/=.~-] on one line; remove it and a new one is generated at start")
    return token


def check_maxmemory(value: str) -> str:
    if not MEMORY_PATTERN.fullmatch(str(value)):
        raise OrchestratorError(
            f"maxmemory {value!r} is not a Redis memory size; use a number with an optional unit "
            "b, k, kb, m, mb, g, gb (e.g. 512mb, 4gb)")
    return str(value)


SMARTREDIS_LIMITS = ("MAX_VALUE_BYTES", "MAX_JOB_BYTES")  # nkml_ai load arguments (docs/smartredis.md)


def check_smartredis_limits(limits: Dict[str, int]) -> Dict[str, int]:
    checked = {}
    for name, value in limits.items():
        if name not in SMARTREDIS_LIMITS:
            raise OrchestratorError(f"smartredis limit {name!r} is not known; use "
                                    f"{' or '.join(SMARTREDIS_LIMITS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise OrchestratorError(f"smartredis limit {name} = {value!r}: use a positive number of bytes")
        checked[name] = value
    return checked


def check_bind(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise OrchestratorError(
            f"bind address {value!r} is not an IP address; use e.g. 127.0.0.1 or this node's "
            "address on the cluster network") from None


def server_config(server_dir: Path, log: Path, host: Optional[str], port: Optional[int],
                  sock: Optional[str], password: str, maxmemory: str, persistence: bool,
                  cluster: bool, smartredis_module: Optional[Path] = None,
                  smartredis_limits: Optional[Dict[str, int]] = None,
                  unprotected: bool = False) -> str:
    """The redis.conf of one server: `port` on `host` (loopback when None) and/or the Unix
    socket `sock`, `password` required (none for SmartRedis clients, which send none), at most
    `maxmemory` and never evicting, persistent or not, a cluster node or not; with
    `smartredis_module` loaded (`unprotected`: its TCP port reachable without a password)."""
    lines = [line for line in [
        f"port {int(port) if port is not None else 0}",
        f"bind {check_bind(host)}" if host else "bind 127.0.0.1",
        # SmartRedis sends no password: the default user needs none (module doc)
        f"requirepass {password}" if smartredis_module is None else "",
        f"maxmemory {check_maxmemory(maxmemory)}",
        "maxmemory-policy noeviction",
        f"dir {conf_path(server_dir)}",
        f"logfile {conf_path(log)}",
        "daemonize no",
        "protected-mode yes",
        "timeout 0",
        "tcp-keepalive 60",
        # Large tensors: a client's pending query may be big; replies to readers too.
        "proto-max-bulk-len 2gb",
        "client-query-buffer-limit 2gb",
    ] if line]
    if sock:
        lines += [f"unixsocket {conf_path(sock)}", "unixsocketperm 700"]
    if persistence:
        lines += ["appendonly yes", 'save "900 1 300 100"']
    else:
        lines += ["appendonly no", 'save ""']
    if smartredis_module is not None:
        limits = "".join(f" {name} {value}" for name, value in (smartredis_limits or {}).items())
        lines += [f"loadmodule {conf_path(smartredis_module, 'module path')} "
                  f"EXECUTE_TIMEOUT {SMARTREDIS_EXECUTE_TIMEOUT_MS}{limits}"]
        if unprotected:
            lines += ["protected-mode no"]
    if cluster:
        lines += ["cluster-enabled yes", 'cluster-config-file "nodes.conf"',
                  "cluster-node-timeout 5000", f"masterauth {password}"]
    return "\n".join(lines) + "\n"
