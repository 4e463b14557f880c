"""The nkml_ai module (docs/smartredis.md) under hostile input: refused stores keep the old
value, values are stored whole up to MAX_VALUE_BYTES, job memory is counted and bounded
(MAX_JOB_BYTES), execution outputs reach the AOF, CLIENT UNBLOCK and disconnects leave no
stale job or waiter, AI.INFO statistics go with their model.

Limits are lowered through the module's load arguments so that every refusal is exercised
with tensors of a few hundred kilobytes. The one test that needs values over 512 MB (the
module API's StringTruncate limit) runs only with NKML_TEST_BIG=1.

The model worker is played by a redis-py connection (NKML.AI.TAKE / NKML.AI.DONE), so each
step of the hand-off is under the test's control.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nekrs_ml import codec
from support.smartredis import CompatRun
from support.waiting import wait_for

KIB = 1024
LIMITS = {"MAX_VALUE_BYTES": 1024 * KIB, "MAX_JOB_BYTES": 1024 * KIB}


def connect(run: CompatRun) -> redis.Redis:
    """One connection (so CLIENT ID names the one that blocks), never waiting forever, and no
    retry: a killed connection is an error, not a second call."""
    return redis.Redis(unix_socket_path=run.addresses[0][len("unix:"):], socket_timeout=30,
                       single_connection_client=True, retry=Retry(NoBackoff(), 0))


def workers_info(conn: redis.Redis) -> dict:
    reply = conn.execute_command("NKML.AI.WORKERS")
    return {k.decode(): v for k, v in zip(reply[::2], reply[1::2])}


def info(conn: redis.Redis, key: str) -> dict:
    reply = conn.execute_command("AI.INFO", key)
    return {k.decode(): v for k, v in zip(reply[::2], reply[1::2])}


class Call(threading.Thread):
    """A command on its own connection, in a thread: its reply or its error, and when."""

    def __init__(self, run: CompatRun, *args):
        super().__init__(daemon=True)
        self.conn = connect(run)
        self.id = self.conn.client_id()
        self.args = args
        self.reply = self.error = None
        self.seconds = None
        self.start()

    def run(self):
        start = time.monotonic()
        try:
            self.reply = self.conn.execute_command(*self.args)
        except redis.RedisError as exc:
            self.error = str(exc)
        finally:
            self.seconds = time.monotonic() - start

    def result(self, timeout: float = 20.0):
        """The reply and the error; the connection stays open (a closed one would hide what
        CLIENT UNBLOCK left behind: the server cleans up after a disconnect)."""
        self.join(timeout)
        assert not self.is_alive(), f"{self.args[0]} did not return within {timeout} s"
        return self.reply, self.error

    def close(self):
        self.conn.close()


def execute(run, model="m", inputs=("t",), outputs=("o",), timeout_ms=10000) -> Call:
    return Call(run, "AI.MODELEXECUTE", model, "INPUTS", len(inputs), *inputs,
                "OUTPUTS", len(outputs), *outputs, "TIMEOUT", timeout_ms)


def tensor(n: int, value: float = 1.0) -> bytes:
    return codec.encode(np.full((n,), value, np.float32))


@pytest.fixture
def limited():
    run = CompatRun("single", workers=False, limits=LIMITS)
    try:
        yield run
    finally:
        run.stop()


def store_model_and_input(conn, n=4):
    conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"model bytes")
    conn.execute_command("AI.TENSORSET", "t", "FLOAT", n, "BLOB", np.ones(n, np.float32).tobytes())


def serve_one(worker: redis.Redis, outputs) -> list:
    """Takes the next job and answers it with `outputs` (encoded tensors); returns the job."""
    job = worker.execute_command("NKML.AI.TAKE", 5000)
    assert job is not None, "no job within 5 s"
    assert worker.execute_command("NKML.AI.DONE", job[0], "OK", *outputs) == b"OK"
    return job


# --- refused stores keep the old value; values are whole up to MAX_VALUE_BYTES ---------------------
def test_a_refused_store_keeps_the_old_value(limited):
    with connect(limited) as conn:
        old = np.arange(4, dtype=np.float32)
        conn.execute_command("AI.TENSORSET", "keep", "FLOAT", 4, "BLOB", old.tobytes())
        too_big = np.zeros(300_000, np.float32)  # 1.2 MB > MAX_VALUE_BYTES (1 MiB)
        pattern = (r"AI.TENSORSET keep: the tensor takes 1200016 bytes, over this server's limit "
                   r"of 1048576 bytes for one value \(nkml_ai's MAX_VALUE_BYTES load argument\); "
                   r"the key is unchanged")
        with pytest.raises(redis.ResponseError, match=pattern):
            conn.execute_command("AI.TENSORSET", "keep", "FLOAT", 300_000, "BLOB", too_big.tobytes())
        with pytest.raises(redis.ResponseError, match="MAX_VALUE_BYTES"):  # zeros, no data sent
            conn.execute_command("AI.TENSORSET", "keep", "FLOAT", 300_000)
        with pytest.raises(redis.ResponseError, match="data length does not match"):
            conn.execute_command("AI.TENSORSET", "keep", "FLOAT", 8, "BLOB", b"short")
        assert np.array_equal(codec.decode(conn.get("keep")), old)

        # a model sent in chunks is stored whole; a replacement over the limit, in two chunks
        # each under it, is refused and the model stays
        blob = bytes(range(256)) * 1000
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", blob[:100_000],
                             blob[100_000:])
        assert conn.execute_command("AI.MODELGET", "m", "BLOB") == blob
        chunk = b"x" * 600_000
        with pytest.raises(redis.ResponseError,
                           match=r"AI.MODELSTORE m: the model takes \d+ bytes, over .*MAX_VALUE_BYTES"):
            conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", chunk, chunk)
        assert conn.execute_command("AI.MODELGET", "m", "BLOB") == blob
        conn.execute_command("AI.SCRIPTSET", "s", "CPU", "SOURCE", "def f(x):\n    return x\n")
        with pytest.raises(redis.ResponseError, match="AI.SCRIPTSET s: the script takes"):
            conn.execute_command("AI.SCRIPTSET", "s", "CPU", "SOURCE", "#" * (1100 * KIB))
        assert conn.execute_command("AI.SCRIPTGET", "s", "SOURCE") == b"def f(x):\n    return x\n"

        # another Redis type is refused and left as it was
        conn.hset("h", "f", "v")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE key h holds another Redis type"):
            conn.execute_command("AI.TENSORSET", "h", "FLOAT", 1, "VALUES", 1)
        with pytest.raises(redis.ResponseError, match="WRONGTYPE key h"):
            conn.execute_command("AI.MODELSTORE", "h", "TORCH", "CPU", "BLOB", b"x")
        assert conn.hget("h", "f") == b"v"
        assert conn.ping()


# --- execution outputs: validated, kept on failure, written whole --------------------------------
def test_an_output_that_cannot_be_stored_is_an_error_and_the_old_value_stays(limited):
    with connect(limited) as conn, connect(limited) as worker:
        store_model_and_input(conn)
        conn.set("o", b"old output")
        assert worker.execute_command("NKML.AI.TAKE", 0) is None  # now a worker
        call = execute(limited)
        job = worker.execute_command("NKML.AI.TAKE", 5000)
        with pytest.raises(redis.ResponseError, match=r"output 0 takes 1200016 bytes, over MAX_VALUE_BYTES"):
            worker.execute_command("NKML.AI.DONE", job[0], "OK", tensor(300_000))
        reply, error = call.result()
        assert reply is None and "over this server's limit of 1048576 bytes" in error, error
        assert "no output was written" in error
        assert conn.get("o") == b"old output"

        # an output key of another Redis type: refused before anything runs, the key intact
        conn.hset("h", "f", "v")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE output key h"):
            conn.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "t", "OUTPUTS", 1, "h",
                                 "TIMEOUT", 2000)
        assert conn.hget("h", "f") == b"v"
        assert workers_info(conn)["queued"] == 0

        # a valid answer under the limit is written
        call.close()
        call = execute(limited)
        serve_one(worker, [tensor(1000, 2.0)])
        assert call.result() == (b"OK", None)
        call.close()
        assert np.array_equal(codec.decode(conn.get("o")), np.full((1000,), 2.0, np.float32))


# --- job memory: counted in used_memory, bounded by MAX_JOB_BYTES --------------------------------------
def test_job_memory_is_counted_and_bounded(limited):
    with connect(limited) as conn, connect(limited) as worker:
        store_model_and_input(conn, n=100_000)  # 400016 bytes
        assert worker.execute_command("NKML.AI.TAKE", 0) is None  # a worker that takes nothing
        before = conn.info("memory")["used_memory"]
        calls = [execute(limited, outputs=(f"o{i}",)) for i in range(2)]
        wait_for(lambda: workers_info(conn)["queued"] == 2, 10, "two jobs queued", interval=0.01)
        assert workers_info(conn)["job_bytes"] == 2 * 400_016
        # the copies are the server's memory: maxmemory sees them
        assert conn.info("memory")["used_memory"] - before >= 2 * 400_016
        start = time.monotonic()
        with pytest.raises(redis.ResponseError,
                           match=r"model m: its inputs take 400016 bytes and the jobs waiting on this "
                                 r"server hold 800032 bytes, over nkml_ai's limit of 1048576 bytes "
                                 r"\(MAX_JOB_BYTES load argument\)"):
            conn.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "t", "OUTPUTS", 1, "o",
                                 "TIMEOUT", 2000)
        assert time.monotonic() - start < 1
        # a taken job lets go of its inputs (they are in the worker's reply)
        job = worker.execute_command("NKML.AI.TAKE", 0)
        assert len(job[5][0]) == 400_016
        assert workers_info(conn)["job_bytes"] == 400_016
        worker.execute_command("NKML.AI.DONE", job[0], "ERR", "not today")
        worker.close()  # the last worker leaves: the queued job fails at once
        errors = sorted(error for _, error in (c.result() for c in calls))
        for c in calls:
            c.close()
        assert errors == ["no nekrs_ml model worker is left on this server", "not today"], errors
        info_now = workers_info(conn)
        assert info_now["job_bytes"] == 0 and info_now["queued"] == 0 and info_now["running"] == 0
        assert conn.ping()


# --- outputs are replicated and persisted ---------------------------------------------------------------
def test_execution_outputs_survive_a_restart_with_persistence():
    run = CompatRun("single", workers=False, persistence=True)
    try:
        out = np.arange(6, dtype=np.float32).reshape(2, 3)
        with connect(run) as conn, connect(run) as worker:
            store_model_and_input(conn)
            assert worker.execute_command("NKML.AI.TAKE", 0) is None
            call = execute(run, outputs=("out", "out2"))
            serve_one(worker, [codec.encode(out), codec.encode(out * 2)])
            assert call.result() == (b"OK", None)
            call.close()
            assert np.array_equal(codec.decode(conn.get("out")), out)
        run.restart_servers()
        with connect(run) as conn:
            assert np.array_equal(codec.decode(conn.get("out")), out)
            assert np.array_equal(codec.decode(conn.get("out2")), out * 2)
            assert np.array_equal(codec.decode(conn.get("t")), np.ones(4, np.float32))
            assert conn.execute_command("AI.MODELGET", "m", "BLOB") == b"model bytes"
    finally:
        run.stop()


# --- CLIENT UNBLOCK and disconnects ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["ERROR", "TIMEOUT"])
def test_an_unblocked_worker_leaves_no_stale_waiter(bare, how):
    with connect(bare) as conn:
        store_model_and_input(conn)
        first = Call(bare, "NKML.AI.TAKE", 5000)
        wait_for(lambda: conn.info("clients")["blocked_clients"] == 1, 10, "the worker waits", interval=0.01)
        assert conn.execute_command("CLIENT", "UNBLOCK", first.id, how) == 1
        reply, error = first.result(5)
        assert (reply, error) == ((None, None) if how == "TIMEOUT" else (None, error))
        assert how == "TIMEOUT" or "UNBLOCKED" in error
        second = Call(bare, "NKML.AI.TAKE", 5000)
        wait_for(lambda: conn.info("clients")["blocked_clients"] == 1, 10, "the second worker waits", interval=0.01)
        caller = execute(bare, timeout_ms=3000)
        job, error = second.result(10)
        assert error is None and job is not None, error
        assert second.seconds < 2  # woken by the job, not by its own timeout
        assert second.conn.execute_command("NKML.AI.DONE", job[0], "OK", tensor(4)) == b"OK"
        assert caller.result(10) == (b"OK", None)
        for call in (first, second, caller):
            call.close()


def test_an_unblocked_caller_leaves_no_queued_job(bare):
    with connect(bare) as conn, connect(bare) as worker:
        store_model_and_input(conn)
        assert worker.execute_command("NKML.AI.TAKE", 0) is None
        caller = execute(bare)
        wait_for(lambda: workers_info(conn)["queued"] == 1, 10, "the job is queued", interval=0.01)
        assert conn.execute_command("CLIENT", "UNBLOCK", caller.id, "ERROR") == 1
        reply, error = caller.result(5)
        assert "UNBLOCKED" in error, error
        state = workers_info(conn)  # the caller is still connected
        assert state["queued"] == 0 and state.get("job_bytes") == 0, state
        assert worker.execute_command("NKML.AI.TAKE", 0) is None  # nothing stale to take
        caller.close()

        # a taken job whose caller is killed: the worker's answer is refused, nothing written
        caller = execute(bare)
        job = worker.execute_command("NKML.AI.TAKE", 5000)
        assert conn.execute_command("CLIENT", "KILL", "ID", caller.id) == 1
        caller.result(5)
        caller.close()
        wait_for(lambda: workers_info(conn)["running"] == 0, 10, "the job is dropped", interval=0.01)
        with pytest.raises(redis.ResponseError, match="not pending"):
            worker.execute_command("NKML.AI.DONE", job[0], "OK", tensor(4))
        assert not conn.exists("o")
        assert conn.ping()


# --- AI.INFO statistics go with their model -------------------------------------------------------------
def test_statistics_are_freed_with_their_model(bare):
    with connect(bare) as conn, connect(bare) as worker:
        store_model_and_input(conn)
        assert worker.execute_command("NKML.AI.TAKE", 0) is None

        def run_once():
            call = execute(bare)
            serve_one(worker, [tensor(4)])
            assert call.result() == (b"OK", None)
            call.close()

        run_once()
        assert info(conn, "m")["calls"] == 1
        conn.execute_command("AI.MODELDEL", "m")
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"a fresh model")
        assert info(conn, "m")["calls"] == 0
        run_once()
        conn.execute_command("AI.MODELDEL", "m")
        assert workers_info(conn).get("stats") == 0  # freed, not only hidden
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"a fresh model")
        run_once()
        run_once()
        assert info(conn, "m")["calls"] == 2
        # a new store is a new model; so is one stored after a plain DEL
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"version 3")
        assert info(conn, "m")["calls"] == 0
        run_once()
        conn.delete("m")
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"version 4")
        assert info(conn, "m")["calls"] == 0 and info(conn, "m")["errors"] == 0
        assert workers_info(conn)["stats"] <= 1


# --- values over 512 MB (the module API's StringTruncate limit): NKML_TEST_BIG=1 only ---------------
@pytest.mark.skipif(os.environ.get("NKML_TEST_BIG") != "1",
                    reason="stores 520 MB values (about 3 GB of memory); set NKML_TEST_BIG=1")
def test_values_over_512_mb_are_stored_whole():
    run = CompatRun("single", workers=False, maxmemory="4gb")
    big = 130 * 1024 * 1024  # float32 elements: 520 MiB
    try:
        with connect(run) as conn, connect(run) as worker:
            conn.execute_command("AI.TENSORSET", "keep", "FLOAT", 1, "VALUES", 7)
            data = np.zeros(big, np.float32)  # untouched pages: cheap to send
            assert conn.execute_command("AI.TENSORSET", "keep", "FLOAT", big, "BLOB",
                                        memoryview(data).cast("B")) == b"OK"
            assert conn.strlen("keep") == 16 + 4 * big
            conn.delete("keep")
            chunk = memoryview(np.zeros(300 * 1024 * 1024, np.uint8))
            assert conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", chunk,
                                        chunk) == b"OK"
            assert conn.strlen("m") > 600 * 1024 * 1024
            conn.execute_command("AI.MODELDEL", "m")
            conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"x")
            conn.execute_command("AI.TENSORSET", "t", "FLOAT", 1, "VALUES", 1)
            conn.set("o", b"old")
            assert worker.execute_command("NKML.AI.TAKE", 0) is None
            call = execute(run, inputs=("t",), outputs=("o",), timeout_ms=60000)
            job = worker.execute_command("NKML.AI.TAKE", 5000)
            answer = np.zeros(16 + 4 * big, np.uint8)  # a float32[big] tensor of zeros
            answer[:16] = np.frombuffer(codec.encode(np.zeros(1, np.float32))[:16], np.uint8)
            answer[8:16] = np.frombuffer(np.array([big], "<u8").tobytes(), np.uint8)
            worker.execute_command("NKML.AI.DONE", job[0], "OK", memoryview(answer))
            assert call.result(120) == (b"OK", None)
            call.close()
            assert conn.strlen("o") == 16 + 4 * big
    finally:
        run.stop()
