"""Bad values and bad arrays give clear errors naming the key; nothing is half-written and the
server and the connection survive."""

import numpy as np
import pytest

import nekrs_ml
from nekrs_ml import _core
from nekrs_ml.errors import TensorFormatError
from support.samples import bad_values



def clients(server):
    return nekrs_ml.Client(**server.client_args()), _core.Client(**server.client_args())


@pytest.mark.parametrize("case", list(bad_values()))
def test_stored_bad_values_are_refused(server, case):
    value, _ = bad_values()[case]
    py, cpp = clients(server)
    key = f"bad:{case}"
    py.set_string(key, value)
    for client in (py, cpp):
        with pytest.raises(TensorFormatError, match=key):
            client.get_tensor(key)
        # the connection is still in sync after the error
        client.put_tensor("after:bad", np.arange(5, dtype="i2"))
        np.testing.assert_array_equal(client.get_tensor("after:bad"), np.arange(5))


def test_key_holding_a_list_is_not_a_tensor(server):
    py, cpp = clients(server)
    py.delete("bad:list")
    py.list_push("bad:list", b"x")
    for client in (py, cpp):
        with pytest.raises(TensorFormatError, match="bad:list"):
            client.get_tensor("bad:list")


@pytest.mark.parametrize("array,words", [
    (np.zeros((4, 4), dtype="f4")[:, ::2], "C-contiguous"),
    (np.zeros(3, dtype="complex64"), "complex64"),
    (np.zeros(3, dtype=">f8"), "endian|byte order"),
    (np.zeros(3, dtype="bool"), "bool"),
], ids=["non-contiguous", "complex", "big-endian", "bool"])
def test_unsendable_arrays_write_nothing(server, array, words):
    for client in clients(server):
        key = f"bad:array:{type(client).__module__}"
        client.delete(key)
        with pytest.raises(TensorFormatError, match=words):
            client.put_tensor(key, array)
        assert not client.exists(key)


def test_buffer_mismatch_on_read(server):
    py, cpp = clients(server)
    py.put_tensor("bad:into", np.arange(10, dtype="f8"))
    for client in (py, cpp):
        with pytest.raises(TensorFormatError, match="bad:into"):
            client.get_tensor_into("bad:into", np.empty(5, dtype="f8"))
        with pytest.raises(TensorFormatError, match="bad:into"):
            client.get_tensor_into("bad:into", np.empty(10, dtype="f4"))


def test_full_database_refuses_without_partial_data(tcp_server):
    py = nekrs_ml.Client(**tcp_server.client_args())
    py.command(["CONFIG", "SET", "maxmemory", "1"])  # any use is over the cap
    try:
        big = np.zeros(1024 * 1024, dtype="f4")
        for client in (py, _core.Client(**tcp_server.client_args())):
            with pytest.raises(nekrs_ml.ServerError, match="bad:oom.*maxmemory|OOM"):
                client.put_tensor("bad:oom", big)
            assert not client.exists("bad:oom")
    finally:
        py.command(["CONFIG", "SET", "maxmemory", "512mb"])
    assert py.redis.ping()
