"""Python client of the orchestrator, with the semantics of the C++ ``nekrs_ml::Client``: same
addresses, same wire format, same errors (nekrs_ml.errors).

The hot path (tensors, pipelines, list messages) runs in the C++ core (``nekrs_ml._core``):
arrays go to and come from the socket without copies and without per-call Python work, with
the GIL released. Everything else goes through redis-py (``Client.redis``)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import redis
import redis.cluster
import redis.exceptions as rex

from . import environment
from ._core import Client as NativeClient
from .errors import (
    AuthenticationError,
    ConfigError,
    ConnectionError,
    ServerError,
    TensorFormatError,
    TimeoutError,
)


@dataclass(frozen=True)
class Address:
    """One server address: ``host:port``, ``[v6]:port`` or ``unix:/path``."""

    host: Optional[str] = None
    port: Optional[int] = None
    path: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "Address":
        text = text.strip()
        if text.startswith("unix:"):
            if not text[5:]:
                raise ConfigError(f"address {text!r}: missing socket path after 'unix:'")
            return cls(path=text[5:])
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"address {text!r} is not host:port, [v6addr]:port or unix:/path")
        return cls(host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# redis-py's cluster client raises RedisClusterException, which is no RedisError.
_REDIS_ERRORS = (rex.RedisError, rex.RedisClusterException)
_AUTH_SIGNS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password",
               "HELLO must be called", "Authentication required")


class Client:
    """``Client(addresses, password=None, cluster=False, timeout=10.0)``.

    ``addresses`` is a list (or one string) as printed by ``nekrs-ml db start``. With
    ``cluster=True`` they are seeds of a Redis Cluster and keys are routed to their shard.
    """

    def __init__(self, addresses: Union[str, Sequence[str]], password: Optional[str] = None,
                 cluster: bool = False, timeout: float = 10.0, connect_timeout: float = 5.0):
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise ConfigError("addresses is empty; pass the addresses printed by `nekrs-ml db start`")
        self.addresses = [str(Address.parse(a)) for a in addresses]
        self.cluster = bool(cluster)
        self.timeout = float(timeout)
        self._parsed = [Address.parse(a) for a in self.addresses]
        self._fast = None
        # AUTH default PASSWORD (the two-argument form): a server with a password checks it; a
        # --smartredis one, which takes clients without a password, accepts it as well
        common = dict(username="default" if password else None, password=password or None,
                      socket_timeout=self.timeout,
                      socket_connect_timeout=connect_timeout)
        try:
            if self.cluster:
                if any(a.path for a in self._parsed):
                    raise ConfigError("a Redis Cluster is reached over TCP; unix: addresses cannot be seeds")
                self._redis = redis.cluster.RedisCluster(
                    startup_nodes=[redis.cluster.ClusterNode(a.host, a.port) for a in self._parsed],
                    require_full_coverage=True, **common)
            else:
                first = self._parsed[0]
                if first.path:
                    self._redis = redis.Redis(unix_socket_path=first.path, **common)
                else:
                    self._redis = redis.Redis(host=first.host, port=first.port, **common)
                self._redis.ping()
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, what="connect", key=None) from None
        # connected after redis-py, so that a wrong address or password is reported as above
        self._native_options = dict(password=password or None, cluster=self.cluster,
                                    timeout=self.timeout, connect_timeout=connect_timeout)
        self._fast = self.native_connection()

    def native_connection(self) -> NativeClient:
        """A new connection of the C++ core to the same servers, with the same options. One
        connection serves one call at a time: a thread of its own needs one of its own."""
        return NativeClient(self.addresses, **self._native_options)

    @classmethod
    def from_env(cls, **overrides) -> "Client":
        """Connects from the orchestrator's environment variables (nekrs_ml.environment)."""
        options = environment.connection_options()
        options.update(overrides)
        return cls(**options)

    # --- errors -----------------------------------------------------------------------------
    def _translate(self, exc: Exception, what: str, key: Optional[str]) -> Exception:
        where = f"{what} {key!r}" if key is not None else f"{what} ({', '.join(self.addresses)})"
        text = str(exc)
        if isinstance(exc, rex.AuthenticationError) or any(sign in text for sign in _AUTH_SIGNS):
            return AuthenticationError(
                f"{where}: authentication failed at {', '.join(self.addresses)}: {text}; pass "
                f"password= or set {environment.PASSWORD_FILE}")
        if isinstance(exc, rex.TimeoutError):
            return TimeoutError(f"{where}: no reply within {self.timeout:g} s: {text}")
        if isinstance(exc, (rex.ConnectionError, rex.ClusterDownError, rex.RedisClusterException)):
            return ConnectionError(
                f"{where}: cannot reach {', '.join(self.addresses)}: {text}; check that "
                "`nekrs-ml db start` is running")
        if "WRONGTYPE" in text:
            return TensorFormatError(f"{where}: the key holds another type, not a tensor ({text})")
        return ServerError(f"{where}: server error: {text}")

    @contextlib.contextmanager
    def _call(self, what: str, key: Optional[str]):
        try:
            yield
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, what, key) from None

    def _node_redis(self, key: str) -> redis.Redis:
        """The redis.Redis of the node owning ``key`` (the only node when not clustered)."""
        if not self.cluster:
            return self._redis
        node = self._redis.get_node_from_key(key)
        return self._redis.get_redis_connection(node)

    # --- tensors ----------------------------------------------------------------------------
    def put_tensor(self, key: str, array: np.ndarray) -> None:
        """Stores ``array`` under ``key`` in one SET, sent from the array's memory; the array
        must be C-contiguous."""
        self._fast.put_tensor(key, array)

    def put_tensors(self, items: Iterable[Tuple[str, np.ndarray]]) -> None:
        """Pipelined multi-put: every SET is sent before the replies are read."""
        items = list(items)
        if items:
            self._fast.put_tensors(items)

    def get_tensor(self, key: str) -> np.ndarray:
        """Reads a tensor into a new array (received straight into its memory)."""
        return self._fast.get_tensor(key)

    def get_tensors(self, keys: Sequence[str]) -> List[np.ndarray]:
        """Pipelined multi-get into new arrays: every GET is sent before the replies are read."""
        return self._fast.get_tensors(list(keys)) if keys else []

    def get_tensor_into(self, key: str, out: np.ndarray) -> np.ndarray:
        """Reads a tensor into a caller-owned array of the same dtype and shape."""
        if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
            raise TensorFormatError(f"get_tensor_into {key!r}: out must be a writeable C-contiguous array")
        return self._fast.get_tensor_into(key, out)

    # --- messages and pipelines ---------------------------------------------------------------
    def push_message(self, key: str, envelope: bytes, array: np.ndarray) -> int:
        """RPUSH ``key`` <envelope + tensor>, the tensor sent from the array's memory (the
        message format of docs/protocol.md, "Inference requests"); returns the list's length."""
        return self._fast.push_message(key, envelope, array)

    def pop_message(self, key: str, wait: float, envelope_bytes: int = 0,
                    tensor_follows: Optional[Callable[[bytes], bool]] = None):
        """BLPOP ``key`` waiting at most ``wait`` s (on top of the call timeout). None when
        nothing came; else ``(envelope, payload)``: the first ``envelope_bytes`` bytes, then the
        rest as a new array when ``tensor_follows(envelope)`` is true, else as bytes."""
        return self._fast.pop_message(key, wait, envelope_bytes, tensor_follows)

    def pop(self, key: str, wait: float) -> Optional[bytes]:
        """BLPOP of one whole element, or None after ``wait`` s."""
        popped = self._fast.pop_message(key, wait)
        return None if popped is None else popped[1]

    def pop_many(self, key: str, count: int) -> List[bytes]:
        """LPOP ``key`` ``count``: up to ``count`` elements, without waiting."""
        return self._fast.pipeline([("LPOP", key, count)])[0] or []

    def pipeline(self, commands: Sequence[Sequence], raise_on_error: bool = True) -> list:
        """Runs raw commands in one round trip per server, each routed by its first key (its
        second argument). An argument is str, bytes, int, a buffer (e.g. a C-contiguous array,
        sent from its memory) or a list/tuple of those sent back to back as one argument.
        Returns the replies (int, bytes, None, list); an error reply raises ServerError naming
        the command and key, or, with ``raise_on_error=False``, is returned as a ServerError."""
        return self._fast.pipeline(commands, raise_on_error)

    # --- keys -------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        with self._call("exists", key):
            return bool(self._redis.exists(key))

    def poll_key(self, key: str, timeout: float, interval: float = 0.005) -> bool:
        """Waits until ``key`` exists; returns False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.exists(key):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def delete(self, key: str) -> int:
        with self._call("delete", key):
            return int(self._redis.delete(key))

    # --- small values and counters ----------------------------------------------------------
    def set_string(self, key: str, value: Union[str, bytes]) -> None:
        with self._call("set_string", key):
            self._redis.set(key, value)

    def get_string(self, key: str) -> Optional[bytes]:
        with self._call("get_string", key):
            return self._redis.get(key)

    def increment(self, key: str, by: int = 1) -> int:
        with self._call("increment", key):
            return int(self._redis.incrby(key, by))

    # --- lists ------------------------------------------------------------------------------
    def list_push(self, key: str, value: Union[str, bytes]) -> int:
        with self._call("list_push", key):
            return int(self._redis.rpush(key, value))

    def list_length(self, key: str) -> int:
        with self._call("list_length", key):
            return int(self._redis.llen(key))

    def list_range(self, key: str, start: int = 0, stop: int = -1) -> List[bytes]:
        return self._fast.list_range(key, start, stop)  # the trainer polls with it

    def list_trim(self, key: str, start: int, stop: int) -> None:
        with self._call("list_trim", key):
            self._redis.ltrim(key, start, stop)

    def command(self, argv: Sequence[str], key: str = ""):
        """Runs one raw command, routed by ``key`` in cluster mode."""
        with self._call(str(argv[0]).lower() if argv else "command", key or None):
            target = self._node_redis(key) if key else self._redis
            return target.execute_command(*argv)

    @property
    def redis(self):
        """The underlying redis-py client, for commands this class does not wrap."""
        return self._redis

    # --- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._redis.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.addresses!r}, cluster={self.cluster})"
