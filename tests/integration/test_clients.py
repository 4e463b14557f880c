"""Both clients against real servers: single TCP, single Unix socket and a 3-shard cluster."""

import threading

import numpy as np
import pytest

import nekrs_ml
from nekrs_ml import _core
from nekrs_ml.errors import AuthenticationError, KeyNotFoundError, ServerError
from support.samples import DTYPES, SHAPES, sample



def clients(server):
    return nekrs_ml.Client(**server.client_args()), _core.Client(**server.client_args())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_round_trip_between_clients(server, dtype, shape):
    py, cpp = clients(server)
    array = sample(dtype, shape)
    for writer, reader, tag in ((cpp, py, "c2p"), (py, cpp, "p2c")):
        key = f"test:{{{dtype}{len(shape)}{tag}}}:x"  # hash tags spread keys over shards
        writer.put_tensor(key, array)
        got = reader.get_tensor(key)
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
        assert reader.delete(key) == 1 and not writer.exists(key)


def test_large_tensor_round_trip(server):
    py, cpp = clients(server)
    array = np.random.default_rng(1).standard_normal((4, 1024, 1024)).astype("f4")  # 16 MiB
    cpp.put_tensor("big:a", array)
    np.testing.assert_array_equal(py.get_tensor("big:a"), array)
    py.put_tensor("big:b", array)
    out = np.empty_like(array)
    assert cpp.get_tensor_into("big:b", out) is out
    np.testing.assert_array_equal(out, array)


def test_keys_lists_and_polling(server):
    py, cpp = clients(server)
    for client in (py, cpp):
        name = type(client).__module__
        key = f"list:{name}"
        client.delete(key)
        assert client.list_push(key, b"a") == 1 and client.list_push(key, "b") == 2
        assert client.list_length(key) == 2
        assert client.list_range(key, 0, -1) == [b"a", b"b"]
        client.list_trim(key, 1, -1)
        assert client.list_range(key) == [b"b"]
        assert client.increment(f"n:{name}") >= 1
        assert client.poll_key(key, timeout=0.5)
        assert not client.poll_key(f"missing:{name}", timeout=0.05)
        assert client.get_string(f"missing:{name}") is None


def test_poll_key_sees_a_key_written_later(server):
    py, cpp = clients(server)
    cpp.delete("late")
    timer = threading.Timer(0.1, lambda: py.put_tensor("late", np.ones(3, "f4")))
    timer.start()
    try:
        assert cpp.poll_key("late", timeout=5.0)
    finally:
        timer.join()


def test_pipelined_multi_put(server):
    py, cpp = clients(server)
    items = [(f"multi:{{r{i}}}:x", np.full((i + 1, 3), i, dtype="f8")) for i in range(16)]
    cpp.put_tensors(items)
    for key, array in items:
        np.testing.assert_array_equal(py.get_tensor(key), array)
    py.put_tensors([(k, a + 1) for k, a in items])
    for key, array in items:
        np.testing.assert_array_equal(cpp.get_tensor(key), array + 1)


def test_pipelined_multi_get(server):
    py, _ = clients(server)
    items = [(f"mget:{{r{i % 3}}}:{i}", np.arange(i + 1, dtype="f4") * i) for i in range(9)]
    py.put_tensors(items)
    for (_, array), got in zip(items, py.get_tensors([key for key, _ in items])):
        np.testing.assert_array_equal(got, array)
    py.delete("mget:none")
    with pytest.raises(KeyNotFoundError, match="mget:none"):
        py.get_tensors([items[0][0], "mget:none", items[1][0]])
    # every reply was read: the connection is still in step
    np.testing.assert_array_equal(py.get_tensors([items[2][0]])[0], items[2][1])


def test_pipeline_runs_raw_commands_with_buffer_arguments(server):
    py, _ = clients(server)
    array = np.arange(6, dtype="f4")
    py.delete("pipe:{a}:list")
    replies = py.pipeline([("RPUSH", "pipe:{a}:list", (b"head", memoryview(array).cast("B"))),
                           ("PEXPIRE", "pipe:{a}:list", 5000),
                           ("LRANGE", "pipe:{a}:list", 0, -1),
                           ("GET", "pipe:{a}:missing")])
    assert replies == [1, 1, [b"head" + array.tobytes()], None]
    with pytest.raises(ServerError, match="pipe:{a}:list"):
        py.pipeline([("GET", "pipe:{a}:list")])  # a list is no string
    [error] = py.pipeline([("GET", "pipe:{a}:list")], raise_on_error=False)
    assert isinstance(error, ServerError) and "WRONGTYPE" in str(error)


def test_messages_push_and_pop(server):
    py, _ = clients(server)
    key = "msg:{q}:queue"
    py.delete(key)
    inputs = np.arange(12, dtype="f4").reshape(4, 3)
    assert py.push_message(key, b"ENV1", inputs) == 1
    py.pipeline([("RPUSH", key, b"ENV2plain text")])
    envelope, array = py.pop_message(key, 1.0, 4, lambda env: env == b"ENV1")
    assert envelope == b"ENV1"
    np.testing.assert_array_equal(array, inputs)
    assert py.pop_message(key, 1.0, 4, lambda env: env == b"ENV1") == (b"ENV2", b"plain text")
    assert py.pop_message(key, 0.05) is None
    for text in (b"a", b"b", b"c"):
        py.pipeline([("RPUSH", key, text)])
    assert py.pop(key, 1.0) == b"a"
    assert py.pop_many(key, 5) == [b"b", b"c"]
    assert py.pop_many(key, 5) == []


def test_missing_key_names_the_key(server):
    for client in clients(server):
        with pytest.raises(KeyNotFoundError, match="no:such:key"):
            client.get_tensor("no:such:key")


def test_timeouts_beyond_the_socket_limit_are_refused(server):
    """1e13 s used to overflow into a 1 us socket timeout: every call then timed out at once."""
    from nekrs_ml.errors import ConfigError

    native = _core.Client(**server.client_args())
    for bad in (1e13, float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ConfigError, match="at most 1e6"):
            native.timeout = bad
    native.timeout = 5.0
    native.put_tensor("timeout:check", np.zeros(2, np.float32))  # the client still works
    assert native.timeout == 5.0 and native.delete("timeout:check") == 1
    native.close()


@pytest.mark.parametrize("password", ["wrong", None])
def test_password_is_required(server, password):
    args = dict(server.client_args(), password=password)
    with pytest.raises(AuthenticationError):
        py = nekrs_ml.Client(**args)
        py.put_tensor("auth:x", np.ones(1))
    with pytest.raises(AuthenticationError):
        cpp = _core.Client(**args)
        cpp.put_tensor("auth:x", np.ones(1))


def test_server_errors_are_quoted_with_the_key(server):
    py, cpp = clients(server)
    for client in (py, cpp):
        with pytest.raises(ServerError, match="bogus"):
            client.command(["BOGUSCMD", "bogus"], key="bogus")


def test_from_env(server, monkeypatch):
    info = server.orchestrator.info(server.dir)
    for name, value in info["env"].items():
        monkeypatch.setenv(name, value)
    py, cpp = nekrs_ml.Client.from_env(), _core.Client.from_env()
    py.put_tensor("env:x", np.arange(3, dtype="i4"))
    np.testing.assert_array_equal(cpp.get_tensor("env:x"), [0, 1, 2])
