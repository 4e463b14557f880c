"""Python client of the orchestrator (redis-py + hiredis), with the semantics of the C++
``nekrs_ml::Client``: same addresses, same wire format, same errors (nekrs_ml.errors)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import redis
import redis.cluster
import redis.exceptions as rex

from . import codec, environment
from .errors import (
    AuthenticationError,
    ConfigError,
    ConnectionError,
    KeyNotFoundError,
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


# Payloads up to this size are joined with the command into one buffer (one send).
_JOIN_LIMIT = 64 * 1024
# redis-py's cluster client raises RedisClusterException, which is no RedisError.
_REDIS_ERRORS = (rex.RedisError, rex.RedisClusterException)
_AUTH_SIGNS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password",
               "HELLO must be called", "Authentication required")


def _resp_prefix(command: bytes, key: bytes, value_len: int) -> bytes:
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n" % (
        len(command), command, len(key), key, value_len)


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
        self._conn = None
        common = dict(password=password or None, socket_timeout=self.timeout,
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
        """Stores ``array`` under ``key`` in one SET. Large arrays are written to the socket
        straight from their memory; the array must be C-contiguous."""
        header = codec.encode_header(array, key)
        data = memoryview(array).cast("B") if array.nbytes else b""
        key_bytes = key.encode()
        prefix = _resp_prefix(b"SET", key_bytes, len(header) + len(data)) + header
        if len(data) <= _JOIN_LIMIT:  # one syscall beats avoiding a small copy
            chunks = [b"".join((prefix, data, b"\r\n"))]
        else:
            chunks = [prefix, data, b"\r\n"]
        with self._call("put_tensor", key):
            try:
                self._roundtrip(key, chunks)
            except rex.ResponseError as exc:
                if not (self.cluster and str(exc).startswith(("MOVED", "ASK"))):
                    raise
                self._redis.set(key, header + bytes(data))  # slot moved: let redis-py route it

    def _roundtrip(self, key: str, chunks):
        """Sends one packed command and reads its reply on the connection serving ``key``:
        the tensor hot path, without redis-py's per-command machinery."""
        if self.cluster:
            pool = self._node_redis(key).connection_pool
            conn = pool.get_connection()
        else:
            pool, conn = None, self._direct()
        try:
            conn.send_packed_command(chunks, check_health=False)
            reply = conn.read_response()
        except BaseException:
            conn.disconnect()  # reply state unknown: never reuse a half-read connection
            raise
        finally:
            if pool is not None:
                pool.release(conn)
        if isinstance(reply, rex.ResponseError):
            raise reply
        return reply

    def _direct(self):
        """This client's own connection for tensors (reconnects by itself after an error)."""
        if self._conn is None:
            self._conn = self._redis.connection_pool.make_connection()
        return self._conn

    def put_tensors(self, items: Iterable[Tuple[str, np.ndarray]]) -> None:
        """Pipelined multi-put: every SET is sent before the replies are read."""
        items = list(items)
        encoded = [(key, codec.encode(array, key)) for key, array in items]
        with self._call("put_tensors", encoded[0][0] if encoded else None):
            pipe = self._redis.pipeline(transaction=False)
            for key, value in encoded:
                pipe.set(key, value)
            replies = pipe.execute(raise_on_error=False)
        for (key, _), reply in zip(encoded, replies):
            if isinstance(reply, Exception):
                raise self._translate(reply, "put_tensors", key)

    def get_tensor(self, key: str) -> np.ndarray:
        """Reads a tensor. The array is a read-only view of the received bytes (no copy);
        use ``get_tensor_into`` to fill a writeable buffer."""
        key_bytes = key.encode()
        with self._call("get_tensor", key):
            value = self._roundtrip(key, [b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key_bytes), key_bytes)])
        if value is None:
            raise KeyNotFoundError(f"get_tensor {key!r}: key does not exist")
        return codec.decode(value, key)

    def get_tensor_into(self, key: str, out: np.ndarray) -> np.ndarray:
        """Reads a tensor into a caller-owned array of the same dtype and shape."""
        array = self.get_tensor(key)
        if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
            raise TensorFormatError(f"get_tensor_into {key!r}: out must be a writeable C-contiguous array")
        if out.dtype != array.dtype or out.shape != array.shape:
            raise TensorFormatError(
                f"get_tensor_into {key!r}: key holds {codec.describe(array.dtype, array.shape)} "
                f"but out is {codec.describe(out.dtype, out.shape)}")
        out[...] = array
        return out

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
        with self._call("list_range", key):
            return list(self._redis.lrange(key, start, stop))

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
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        self._redis.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.addresses!r}, cluster={self.cluster})"
