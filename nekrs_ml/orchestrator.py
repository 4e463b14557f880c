"""The orchestrator: the lifecycle of the redis-server processes that hold a run's data.

It is one file because start, cluster forming, health checks, stop and status all work on the
same run-directory state (state.json, the password, the per-node lock); what a server's
redis.conf says is nekrs_ml.redis_conf.

Modes:
  single     one server, TCP (loopback by default) or a Unix socket;
  colocated  one server per node on a Unix socket ``<run_dir>/<hostname>/redis.sock``; on several
             nodes, run ``nekrs-ml db start --mode colocated`` once per node (e.g. under mpiexec
             with one process per node) with a shared run directory;
  cluster    a Redis Cluster of N >= 3 masters on TCP, slots split evenly, created here.

Every server gets the run's generated password, a ``maxmemory`` cap with ``noeviction`` (a full
database refuses writes instead of silently dropping data) and no persistence unless asked.
The run directory holds the password file, one folder per node with each server's config, log,
socket and a ``state.json`` of what was started, so ``stop`` and ``status`` work from any shell.

Nothing found in a run directory is trusted unless this user made it (nekrs_ml.rundir): the
directories are 0700, the password, configs and state are 0600 files of ours, every value written
into redis.conf is checked (a value that could end a line or a quote is refused, not escaped), and
the servers run with umask 077 so that persistence files are private too. A per-node lock file,
held by the servers themselves, keeps a second `db start` out of a live run's directory, and each
server's start time is recorded so that `db stop` never signals a process that reused its pid.

With ``smartredis=True`` every server loads the nkml_ai module (the RedisAI commands SmartRedis
clients send, docs/smartredis.md). SmartRedis cannot send a password, so such a server takes
clients without one: it must listen on a Unix socket in the private run directory only, unless
``smartredis_tcp=True`` says that its TCP port may be reached without a password.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import redis

from . import environment, rundir
from .errors import OrchestratorError
from .processes import (CLUSTER_BUS_OFFSET, die_with_parent, free_port, port_is_free,  # noqa: F401
                        process_start_time, process_state)
from .redis_conf import (check_bind, check_maxmemory, check_password, check_smartredis_limits,
                         conf_path, server_config)
from .waiting import wait_until

CLUSTER_SLOTS = 16384
STATE_FILE = "state.json"
PASSWORD_FILE = "password"
SMARTREDIS_MODULE = "nkml_ai.so"
LOCK_FILE = "db.lock"
MODES = environment.MODES
SERVER_UMASK = 0o077  # dump/AOF files, sockets and logs of the servers are theirs alone


@dataclass
class Server:
    """One started redis-server."""

    name: str
    address: str  # host:port or unix:PATH
    pid: int
    config: str
    log: str
    host: Optional[str] = None
    port: Optional[int] = None
    socket: Optional[str] = None
    start_time: Optional[int] = None  # /proc start time: tells our server from a reused pid


@dataclass
class State:
    mode: str
    node: str
    namespace: str
    servers: List[Server] = field(default_factory=list)
    smartredis: bool = False  # the servers answer RedisAI commands, without a password

    @classmethod
    def load(cls, path: Path) -> "State":
        # the pids in it get signalled: only a state file of ours counts
        raw = json.loads(rundir.read_private(path, "state file"))
        return cls(mode=raw["mode"], node=raw["node"], namespace=raw.get("namespace", "nkml"),
                   servers=[Server(**s) for s in raw["servers"]],
                   smartredis=bool(raw.get("smartredis", False)))

    def save(self, path: Path) -> None:
        rundir.write_private(path, json.dumps(asdict(self), indent=2))


def find_redis_server(path: Optional[str] = None) -> str:
    candidate = path or os.environ.get("NEKRS_ML_REDIS_SERVER") or shutil.which("redis-server")
    if not candidate or not os.access(candidate, os.X_OK):
        raise OrchestratorError(
            f"redis-server not found{f' at {candidate!r}' if candidate else ' on PATH'}; install it "
            "(Debian: apt-get install redis-server) or pass --redis-server PATH "
            "(any Redis >= 7 or Valkey server binary)")
    return candidate


def smartredis_module() -> Path:
    """The nkml_ai Redis module built with the package (nekrs_ml/lib/nkml_ai.so)."""
    path = Path(__file__).resolve().parent / "lib" / SMARTREDIS_MODULE
    if not path.is_file():
        raise OrchestratorError(
            f"the RedisAI compatibility module {path} is not installed; rebuild the package "
            "(pip install --no-build-isolation .) with a C compiler present")
    return path


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a running redis/valkey server (guards against reused pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # cmdline is empty for a moment right after fork/exec: that process is ours and alive
    if cmdline and b"redis" not in cmdline and b"valkey" not in cmdline:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return status != "Z"


def is_our_server(server: "Server") -> bool:
    """True when the server's pid still is the process that was started for it."""
    if not pid_alive(server.pid):
        return False
    return server.start_time is None or process_start_time(server.pid) == server.start_time


def node_name() -> str:
    return environment.node_names()[0]


class Orchestrator:
    """Starts, stops and inspects the servers of one run directory.

    >>> with Orchestrator("runs/demo", mode="single").started() as orch:
    ...     client = nekrs_ml.Client(orch.addresses, password=orch.password)
    """

    def __init__(self, run_dir, mode: str = "single", transport: str = "tcp", shards: int = 3,
                 bind: str = "127.0.0.1", port: Optional[int] = None, maxmemory: str = "1gb",
                 persistence: bool = False, redis_server: Optional[str] = None,
                 namespace: str = "nkml", start_timeout: float = 30.0, smartredis: bool = False,
                 smartredis_tcp: bool = False, die_with_parent: bool = False,
                 form_cluster: bool = True, smartredis_limits: Optional[Dict[str, int]] = None):
        if mode not in MODES:
            raise OrchestratorError(f"mode {mode!r} is not valid; use one of {', '.join(MODES)}")
        if transport not in ("tcp", "unix"):
            raise OrchestratorError(f"transport {transport!r} is not valid; use tcp or unix")
        if mode == "cluster" and shards < 3:
            raise OrchestratorError(f"--shards {shards}: a Redis Cluster needs at least 3 masters")
        if mode == "cluster" and transport == "unix":
            raise OrchestratorError("a Redis Cluster runs over TCP; drop --transport unix or use --mode single")
        if mode == "colocated" and port is not None:
            raise OrchestratorError("--port does not apply to colocated mode (Unix socket per node)")
        if "{" in namespace or "}" in namespace or ":" in namespace or not namespace:
            raise OrchestratorError(f"namespace {namespace!r}: use a non-empty name without '{{', '}}' or ':'")
        if port is not None and not 0 < int(port) < 65536:
            raise OrchestratorError(f"--port {port}: use a TCP port between 1 and 65535")
        if smartredis and mode != "colocated" and transport == "tcp" and not smartredis_tcp:
            raise OrchestratorError(
                "SmartRedis clients send no password, so a --smartredis server takes clients "
                "without one: serve it on a Unix socket in the private run directory "
                "(--transport unix; .par transport = unix), or, knowing that anyone who reaches "
                "the port gets in, allow it with --smartredis-tcp (.par smartredisTcp = true; "
                "a Redis Cluster needs it)")
        self.run_dir = Path(run_dir).absolute()
        conf_path(self.run_dir, "run directory")
        self.mode = mode
        self.transport = "unix" if mode == "colocated" else transport
        self.shards = shards if mode == "cluster" else 1
        self.bind = check_bind(bind)
        self.port = port
        self.maxmemory = check_maxmemory(maxmemory)
        self.persistence = persistence
        self.redis_server = redis_server
        self.namespace = namespace
        self.start_timeout = start_timeout
        self.smartredis = smartredis
        self.smartredis_tcp = smartredis_tcp
        # nkml_ai load arguments beyond EXECUTE_TIMEOUT (MAX_VALUE_BYTES, MAX_JOB_BYTES)
        self.smartredis_limits = check_smartredis_limits(smartredis_limits or {})
        # a node agent's servers: the kernel stops them when the agent dies, however it dies
        self.die_with_parent = die_with_parent
        # False: this host's masters are one part of a cluster formed later (form_cluster_of)
        self.form_cluster = form_cluster
        self._module: Optional[Path] = None  # this start's copy of the nkml_ai module
        self.node = node_name()

    # --- paths ------------------------------------------------------------------------------
    @property
    def node_dir(self) -> Path:
        return self.run_dir / self.node

    @property
    def password_file(self) -> Path:
        return self.run_dir / PASSWORD_FILE

    @property
    def password(self) -> str:
        text = rundir.read_private(self.password_file, "password file")
        return check_password(text, self.password_file)

    # --- queries over the whole run directory ----------------------------------------------
    @staticmethod
    def states(run_dir) -> List[State]:
        run_dir = Path(run_dir)
        states = []
        for path in sorted(run_dir.glob(f"*/{STATE_FILE}")):
            try:
                states.append(State.load(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise OrchestratorError(
                    f"state file {path} is unreadable ({exc}); remove {path.parent} and start again"
                ) from None
        return states

    @classmethod
    def info(cls, run_dir) -> dict:
        """What `db start` prints: mode, addresses, password file, run directory, environment."""
        run_dir = Path(run_dir).absolute()
        states = cls.states(run_dir)
        if not states:
            raise OrchestratorError(
                f"no orchestrator in {run_dir}; start one with `nekrs-ml db start --dir {run_dir}`")
        mode, namespace = states[0].mode, states[0].namespace
        addresses = [s.address for st in states for s in st.servers]
        password_file = str(run_dir / PASSWORD_FILE)
        return {
            "mode": mode,
            "addresses": addresses,
            "password_file": password_file,
            "run_dir": str(run_dir),
            "namespace": namespace,
            "servers": [dict(address=s.address, pid=s.pid, node=st.node, log=s.log)
                        for st in states for s in st.servers],
            "smartredis": states[0].smartredis,
            "env": environment.export(mode, addresses, password_file, str(run_dir), namespace,
                                      smartredis=states[0].smartredis),
        }

    # --- start ------------------------------------------------------------------------------
    def start(self) -> dict:
        binary = find_redis_server(self.redis_server)
        if self.smartredis:
            smartredis_module()
            if self.transport == "tcp":
                sys.stderr.write(
                    f"WARNING: nekrs-ml db: the --smartredis servers on {self.bind} accept clients "
                    "without a password (--smartredis-tcp): anyone who reaches their ports can "
                    "read, change or delete the run's data, and run code as you through the "
                    "models and packages stored there (docs/security.md)\n")
        rundir.private_dir(self.run_dir)
        rundir.private_dir(self.node_dir)
        # Taken before anything in the directory is read or changed; the servers inherit it,
        # so it stays held for as long as any of them lives.
        lock = rundir.RunLock(
            self.node_dir / LOCK_FILE, f"run directory {self.run_dir}",
            f"stop its servers with `nekrs-ml db stop --dir {self.run_dir}` or choose another --dir"
        ).acquire()
        try:
            return self._start_locked(binary, lock)
        finally:
            lock.release()

    def _start_locked(self, binary: str, lock: rundir.RunLock) -> dict:
        self._check_run_dir()
        password = self._ensure_password()
        self._module = self._private_module() if self.smartredis else None
        state = State(mode=self.mode, node=self.node, namespace=self.namespace,
                      smartredis=self.smartredis)
        state_path = self.node_dir / STATE_FILE
        try:
            taken: set = set()
            for index in range(self.shards):
                server = self._spawn(binary, index, password, taken, lock.fd)
                state.servers.append(server)
                state.save(state_path)  # record each pid at once, so stop() finds it on failure
            lock.note("redis-server pids " + " ".join(str(s.pid) for s in state.servers))
            for server in state.servers:
                self._wait_ready(server, password)
            if self.mode == "cluster" and self.form_cluster:
                self._form_cluster(state.servers, password)
        except BaseException:
            self._terminate(state.servers)
            state_path.unlink(missing_ok=True)
            raise
        return self.info(self.run_dir)

    @contextlib.contextmanager
    def started(self):
        """Context manager: start, yield self, always stop."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def dead_servers(self) -> List[str]:
        """"name (pid P, state)" of each server of this node that is gone or stopped (SIGSTOP):
        a run whose database is dead or frozen has failed in the orchestrator."""
        dead = []
        for state in self.states(self.run_dir):
            if state.node != self.node:
                continue
            for server in state.servers:
                if not is_our_server(server):
                    dead.append(f"{server.name} (pid {server.pid}, exited)")
                elif process_state(server.pid) in ("T", "t"):
                    dead.append(f"{server.name} (pid {server.pid}, stopped)")
        return dead

    @property
    def addresses(self) -> List[str]:
        return self.info(self.run_dir)["addresses"]

    def _check_run_dir(self) -> None:
        state_path = self.node_dir / STATE_FILE
        if state_path.exists():
            try:
                state = State.load(state_path)
                alive = [s.pid for s in state.servers if is_our_server(s)]
            except (OSError, ValueError, KeyError, TypeError):
                alive = []
            if alive:
                raise OrchestratorError(
                    f"run directory {self.run_dir} already has running servers (pids "
                    f"{', '.join(map(str, alive))}); stop them with `nekrs-ml db stop --dir {self.run_dir}` "
                    "or choose another --dir")
            raise OrchestratorError(
                f"run directory {self.run_dir} holds the state of an orchestrator that did not stop "
                f"cleanly; clean it with `nekrs-ml db stop --dir {self.run_dir}` or choose another --dir")
        other_modes = {st.mode for st in self.states(self.run_dir)} - {self.mode}
        if other_modes:
            raise OrchestratorError(
                f"run directory {self.run_dir} already holds a {other_modes.pop()} orchestrator; "
                "use another --dir")

    def _ensure_password(self) -> str:
        """A new password, or the existing one when it passes every check (several nodes of a
        colocated run share one; a reused run directory keeps its own)."""
        rundir.create_private(self.password_file, secrets.token_hex(32) + "\n")
        return self.password

    def _spawn(self, binary: str, index: int, password: str, taken: set,
               lock_fd: Optional[int]) -> Server:
        name = f"redis-{index}" if self.shards > 1 else "redis"
        server_dir = self.node_dir / name if self.shards > 1 else self.node_dir
        rundir.private_dir(server_dir)
        host = port = sock = None
        if self.transport == "unix":
            sock = str(server_dir / "redis.sock")
            if len(sock) > 100:
                raise OrchestratorError(
                    f"socket path {sock} is longer than the 100 characters a Unix socket allows; "
                    "choose a shorter --dir")
            address = f"unix:{sock}"
        else:
            host = self.bind
            if self.port is not None and index == 0:
                port = self.port
                if not port_is_free(host, port) or (
                        self.mode == "cluster" and not port_is_free(host, port + CLUSTER_BUS_OFFSET)):
                    raise OrchestratorError(
                        f"port {port} on {host} is taken (another server?); choose another --port "
                        "or leave --port out to use a free one")
            else:
                port = free_port(host, with_bus=self.mode == "cluster", taken=taken)
            taken.add(port)
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for loaded in ("nodes.conf", "dump.rdb", "appendonlydir"):  # what the server reads at start
            rundir.check_ours(server_dir / loaded, "server file")
        config = server_dir / "redis.conf"
        log = server_dir / "redis.log"
        rundir.write_private(config, self._config_text(server_dir, host, port, sock, password, log))
        log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(log_fd, "ab") as log_handle:
            process = subprocess.Popen(
                [binary, str(config)], stdout=log_handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=server_dir, umask=SERVER_UMASK,
                pass_fds=(lock_fd,) if lock_fd is not None else (),
                start_new_session=True,  # outlives `db start`; stopped by `db stop`
                preexec_fn=die_with_parent(signal.SIGTERM) if self.die_with_parent else None)
        return Server(name=name, address=address, pid=process.pid, config=str(config),
                      log=str(log), host=host, port=port, socket=sock,
                      start_time=process_start_time(process.pid))

    def _config_text(self, server_dir: Path, host, port, sock, password: str, log: Path) -> str:
        return server_config(
            server_dir, log, host, port, sock, check_password(password, self.password_file),
            self.maxmemory, self.persistence, cluster=self.mode == "cluster",
            smartredis_module=self._module if self.smartredis else None,
            smartredis_limits=self.smartredis_limits,
            # allowed with --smartredis-tcp, warned about
            unprotected=self.transport == "tcp" and not ipaddress.ip_address(self.bind).is_loopback)

    def _private_module(self) -> Path:
        """A copy of the nkml_ai module in this node's private directory: redis-server loads
        only executable files, which a wheel's data files need not be, and a copy of ours
        cannot be swapped under a running server. Made once per start, before any server."""
        copy = self.node_dir / SMARTREDIS_MODULE
        rundir.check_ours(copy, "module copy")
        copy.unlink(missing_ok=True)
        shutil.copyfile(smartredis_module(), copy)
        copy.chmod(0o700)
        return copy

    @staticmethod
    def _connect(server: Server, password: str, timeout: float = 2.0) -> redis.Redis:
        # AUTH default PASSWORD: accepted by a server with a password and by a --smartredis one
        if server.socket:
            return redis.Redis(unix_socket_path=server.socket, username="default",
                               password=password, socket_timeout=timeout,
                               socket_connect_timeout=timeout)
        return redis.Redis(host=server.host, port=server.port, username="default",
                           password=password, socket_timeout=timeout,
                           socket_connect_timeout=timeout)

    def _wait_ready(self, server: Server, password: str) -> None:
        def answers() -> bool:
            try:
                with self._connect(server, password) as conn:
                    return bool(conn.ping())
            except redis.RedisError:  # not listening yet, or still loading its data
                return False

        def alive() -> None:
            if not pid_alive(server.pid):
                raise OrchestratorError(self._startup_failure(server))

        wait_until(answers, self.start_timeout, server.address, interval=0.05, check=alive,
                   see=f"see {server.log}")

    @staticmethod
    def _startup_failure(server: Server) -> str:
        try:
            tail = Path(server.log).read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        text = " | ".join(tail)
        if "Address already in use" in text:
            return (f"{server.address}: port is taken (another server?); choose another --port "
                    f"or leave --port out. Log: {server.log}")
        return f"redis-server for {server.address} exited during start-up: {text or 'no log'} ({server.log})"

    @classmethod
    def form_cluster_of(cls, run_dir) -> None:
        """Forms one Redis Cluster of the masters every host started in ``run_dir``
        (form_cluster = False), over the network."""
        orchestrator = cls(run_dir, mode="cluster")
        servers = [s for state in cls.states(run_dir) for s in state.servers]
        orchestrator._form_cluster(servers, orchestrator.password)

    def _form_cluster(self, servers: List[Server], password: str) -> None:
        """Split the slots evenly, introduce the nodes to each other, wait for state ok."""
        conns = [self._connect(s, password, timeout=5.0) for s in servers]
        try:
            per_shard = CLUSTER_SLOTS // len(servers)
            for index, conn in enumerate(conns):
                first = index * per_shard
                last = CLUSTER_SLOTS - 1 if index == len(conns) - 1 else first + per_shard - 1
                conn.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for server in servers[1:]:
                conns[0].execute_command("CLUSTER", "MEET", server.host, server.port)

            def state_ok() -> bool:
                infos = [conn.execute_command("CLUSTER", "INFO") for conn in conns]
                infos = [i.decode() if isinstance(i, bytes) else i for i in infos]
                return all("cluster_state:ok" in i and f"cluster_known_nodes:{len(servers)}" in i
                           for i in infos)

            wait_until(state_ok, self.start_timeout, f"the cluster of {len(servers)} nodes",
                       see=f"state ok not reached; see the logs in {self.node_dir}")
        finally:
            for conn in conns:
                conn.close()

    # --- stop -------------------------------------------------------------------------------
    @classmethod
    def stop_dir(cls, run_dir, timeout: float = 10.0) -> List[str]:
        """Stops this node's servers of ``run_dir``; returns their addresses. Idempotent."""
        run_dir = Path(run_dir).absolute()
        node_dir = run_dir / node_name()
        state_path = node_dir / STATE_FILE
        if not state_path.exists():
            return []
        try:
            state = State.load(state_path)
        except (OSError, ValueError, KeyError, TypeError):
            state = State(mode="unknown", node=node_name(), namespace="")
        cls._terminate(state.servers, timeout)
        state_path.unlink(missing_ok=True)
        for server in state.servers:
            if server.socket:
                Path(server.socket).unlink(missing_ok=True)
        return [s.address for s in state.servers]

    def stop(self, timeout: float = 10.0) -> List[str]:
        return self.stop_dir(self.run_dir, timeout)

    @staticmethod
    def _terminate(servers: List[Server], timeout: float = 10.0) -> None:
        """SIGTERM (redis shuts down cleanly, no save when persistence is off), then SIGKILL;
        only to pids that still are the servers started (a stale state never hits another)."""
        live = [s for s in servers if is_our_server(s)]
        for server in live:
            try:
                os.kill(server.pid, signal.SIGTERM)
                os.kill(server.pid, signal.SIGCONT)  # a stopped (frozen) server acts on it now
            except ProcessLookupError:
                pass
        for sig, wait in ((None, timeout), (signal.SIGKILL, 5.0)):
            for server in live if sig else []:
                try:
                    os.kill(server.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while live and time.monotonic() < deadline:
                for server in live:
                    _reap(server.pid)
                live = [s for s in live if is_our_server(s)]
                time.sleep(0.02)
        if live:
            raise OrchestratorError(
                f"servers did not stop: pids {', '.join(str(s.pid) for s in live)}")
        for server in servers:
            _reap(server.pid)

    # --- status -----------------------------------------------------------------------------
    @classmethod
    def status(cls, run_dir) -> dict:
        """Memory, keys and clients per server (or the error that prevented reading them)."""
        info = cls.info(run_dir)
        password = environment.read_password(info["password_file"])
        report = []
        for state in cls.states(run_dir):
            for server in state.servers:
                entry = {"address": server.address, "node": state.node, "pid": server.pid,
                         "running": pid_alive(server.pid) if state.node == node_name() else None}
                try:
                    with cls._connect(server, password) as conn:
                        raw = conn.info()
                    entry.update(
                        used_memory_bytes=raw.get("used_memory"),
                        maxmemory_bytes=raw.get("maxmemory"),
                        keys=sum(v.get("keys", 0) for k, v in raw.items()
                                 if k.startswith("db") and isinstance(v, dict)),
                        clients=raw.get("connected_clients"),
                        uptime_s=raw.get("uptime_in_seconds"),
                    )
                except redis.RedisError as exc:
                    entry["error"] = str(exc)
                report.append(entry)
        return {"mode": info["mode"], "run_dir": info["run_dir"], "servers": report}


def _reap(pid: int) -> None:
    """Collects the exit status when the server is our child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except OSError:  # not our child, or already collected
        pass
