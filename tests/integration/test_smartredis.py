"""SmartRedis's own Python client (0.6.1) against `--smartredis` servers, single and cluster.

The client lives in its own virtual environment (it needs numpy < 2), made once by this module
in pytest's cache; where it cannot be installed the SmartRedis tests skip and say why. The
module's own commands (worker hand-off, errors, timeouts) are also tested with redis-py, which
needs no extra environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import redis

from nekrs_ml import Client, codec
from nekrs_ml.errors import OrchestratorError
from nekrs_ml.orchestrator import Orchestrator
from support.runs import finish, no_servers_left, report, start_run, write_case
from support.smartredis import CompatRun, PROGRAM
from support.waiting import wait_for

@pytest.fixture(params=["single", "colocated", "cluster"])
def compat(request):
    run = CompatRun(request.param)
    try:
        yield run
    finally:
        run.stop()


def run_program(python: str, scenario: str, run: CompatRun, workdir: Path, timeout=180,
                extra_env=None) -> dict:
    env = dict(os.environ, SR_LOG_LEVEL="QUIET", **(extra_env or {}))
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [python, str(PROGRAM), scenario, run.ssdb, run.kind, str(workdir)],
        capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_models(workdir: Path):
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a * 2.0, b.sum(dim=1, keepdim=True)

    class Slow(torch.nn.Module):
        def forward(self, x):
            for _ in range(200):
                x = torch.tanh(x @ torch.ones(3, 3)) 
                y = torch.randn(300, 300)
                for _ in range(20):
                    y = y @ y / 300.0
                x = x + 0.0 * y.sum()
            return x

    torch.jit.save(torch.jit.script(mlp), str(workdir / "mlp.pt"))
    torch.jit.save(torch.jit.script(Two()), str(workdir / "two.pt"))
    torch.jit.save(torch.jit.script(Slow()), str(workdir / "slow.pt"))
    x = np.random.default_rng(3).standard_normal((50, 3)).astype(np.float32)
    np.save(workdir / "x.npy", x)
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x)).numpy()
    return x, expected


# --- SmartRedis programs -------------------------------------------------------------------------
def test_smartredis_program_runs_unchanged(compat, smartredis_python, tmp_path):
    x, expected = save_models(tmp_path)
    password = Orchestrator(compat.dir).password
    with Client(compat.addresses, password=password, cluster=compat.kind == "cluster") as ours:
        ours.put_tensor("from_nekrs_ml", np.array([[1.5, -2.0]], dtype=np.float32))
        out = run_program(smartredis_python, "workflow", compat, tmp_path)
        assert np.array_equal(ours.get_tensor("from_smartredis"),
                              np.arange(6, dtype=np.float64).reshape(2, 3))
        if compat.kind != "cluster":  # SmartRedis's own keys; in a cluster they carry its prefix
            assert np.array_equal(ours.get_tensor("x"), x)
    assert out["dtypes"] == {name: True for name in out["dtypes"]} and len(out["dtypes"]) == 8
    assert out["from_nekrs_ml"] == [[1.5, -2.0]]
    assert out["model_exists"] and out["model_bytes_equal"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), 2.0 * x[:, :2], rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), x[:, 2:].sum(1, keepdims=True), rtol=1e-6)
    assert out["script_source_equal"] and out["double_ok"] and out["split_ok"] and out["function_ok"]
    assert out["poll_tensor_present"] and not out["poll_tensor_absent"] and out["poll_key"]
    assert out["dataset_ok"] and out["dataset_exists"]
    assert out["missing_model_error"]
    assert "Char" in out["model_error"] and "mlp" in out["model_error"], out["model_error"]
    assert not out["model_exists_after_delete"]
    log = compat.stop_worker()
    assert "SmartRedis:" in log and "jobs run" in log, log


def test_worker_killed_mid_execution_gives_an_error_not_a_hang(smartredis_python, tmp_path):
    save_models(tmp_path)
    run = CompatRun("single")
    try:
        result = {}

        def call():
            result.update(run_program(smartredis_python, "slow", run, tmp_path))

        caller = threading.Thread(target=call)
        caller.start()
        # the worker is inside the slow forward once it has taken the job
        wait_for(lambda: run.jobs(run.addresses[0], "running"), 60, "the worker to take the job")
        run.worker.kill()
        caller.join(60)
        assert not caller.is_alive()
        assert "disconnected" in result["error"] or "no nekrs_ml model worker" in result["error"], result
        assert result["seconds"] < 30
        with run.node(run.addresses[0]) as conn:  # the server is fine and knows no worker
            assert conn.ping()
            assert run.workers(run.addresses[0]) == 0
    finally:
        run.stop()


def test_nekrs_ml_run_serves_smartredis_clients_in_a_training_run(smartredis_python, run_dir,
                                                                  tmp_path):
    """smartredisCompat under `nekrs-ml run`: the run's workers serve a SmartRedis program
    while the stand-in solver streams to the trainer; the run ends as usual."""

    x, expected = save_models(tmp_path)
    case = write_case(run_dir, {"NEKRS_ML": {"smartredisCompat": "true", "transport": "unix"},
                                "REPRODUCER": {"steps": 400, "stepCost": 0.02}})
    proc = start_run(case, run_dir)
    try:
        worker_log = Path(run_dir) / "worker0.log"

        def worker_started():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            return "SmartRedis jobs of" in (worker_log.read_text() if worker_log.exists() else "")
        wait_for(worker_started, 120, "the run's worker to start", interval=0.2)
        sockets = list((Path(run_dir) / "db").glob("*/redis.sock"))
        assert len(sockets) == 1
        run = types.SimpleNamespace(ssdb=f"unix://{sockets[0]}", kind="single")
        assert run_program(smartredis_python, "model", run, tmp_path)["ok"]
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)
    finally:
        code, out = finish(proc, timeout=240)
    assert code == 0, out[-3000:]
    assert report(run_dir)["status"] == "ok"
    assert "1 jobs run, 0 failed" in worker_log.read_text()
    assert no_servers_left(run_dir)


# --- the module's contract, through redis-py ------------------------------------------------------
def test_scriptexecute_modelrun_and_chunked_modelget(tmp_path):
    """RedisAI 1.2 forms SmartRedis 0.6 does not send: AI.SCRIPTSTORE / AI.SCRIPTEXECUTE with
    counts, AI.MODELRUN without; AI.MODELGET in chunks of MODEL_CHUNK_SIZE."""
    x, expected = save_models(tmp_path)
    run = CompatRun("single")
    try:
        with run.node(run.addresses[0]) as conn:
            conn.execute_command("AI.TENSORSET", "x", "FLOAT", *x.shape, "BLOB", x.tobytes())
            source = ("def split(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
                      "    return tensors[0][:, 0:1], tensors[0].sum(dim=1, keepdim=True)\n")
            conn.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "split",
                                 "SOURCE", source)
            assert conn.execute_command("AI.SCRIPTEXECUTE", "s", "split", "INPUTS", 1, "x",
                                        "OUTPUTS", 2, "first", "total", "TIMEOUT", 20000) == b"OK"
            total = codec.decode(conn.get("total"))
            np.testing.assert_allclose(total, x.sum(1, keepdims=True), rtol=1e-6)
            meta = conn.execute_command("AI.SCRIPTGET", "s", "META")
            assert meta[4:] == [b"entry_points", [b"split"]]
            blob = (tmp_path / "mlp.pt").read_bytes()
            conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "INPUTS", 1, "x",
                                 "OUTPUTS", 1, "y", "BLOB", blob[:1000], blob[1000:])
            assert conn.execute_command("AI.MODELRUN", "m", "INPUTS", "x", "OUTPUTS", "y") == b"OK"
            np.testing.assert_allclose(codec.decode(conn.get("y")), expected, rtol=1e-6, atol=1e-6)
            conn.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 4096)
            chunks = conn.execute_command("AI.MODELGET", "m", "BLOB")
            assert isinstance(chunks, list) and b"".join(chunks) == blob
            assert all(len(c) <= 4096 for c in chunks) and len(chunks) == -(-len(blob) // 4096)
            meta = conn.execute_command("AI.MODELGET", "m", "META")
            assert meta[10:14] == [b"inputs", [b"x"], b"outputs", [b"y"]]
            # a new store is a new version: the worker runs the new model at the next call
            conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB",
                                 (tmp_path / "two.pt").read_bytes())
            with pytest.raises(redis.ResponseError, match="forward"):
                conn.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
            for args in [("AI.MODELEXECUTE", "m", "INPUTS", 5, "x"), ("AI.TENSORGET",),
                         ("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y", "TIMEOUT", -1),
                         ("NKML.AI.DONE", 12345, "OK"), ("AI.INFO", "x"), ("AI.CONFIG", "SET", "X")]:
                with pytest.raises(redis.ResponseError):
                    conn.execute_command(*args)
            assert conn.ping()
    finally:
        run.stop()



def test_no_worker_is_an_immediate_error(bare):
    with bare.node(bare.addresses[0]) as conn:
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"x")
        conn.execute_command("AI.TENSORSET", "t", "FLOAT", 1, 1, "VALUES", 1)
        start = time.monotonic()
        with pytest.raises(redis.ResponseError, match="no nekrs_ml model worker serves"):
            conn.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "t", "OUTPUTS", 1, "o")
        assert time.monotonic() - start < 1


def test_frozen_worker_times_out(bare):
    """A worker that took the job and never answers: the caller's TIMEOUT ends it."""
    with bare.node(bare.addresses[0]) as conn, bare.node(bare.addresses[0]) as worker:
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"x")
        conn.execute_command("AI.TENSORSET", "t", "FLOAT", 1, 1, "VALUES", 1)
        assert worker.execute_command("NKML.AI.TAKE", 0) is None  # now a worker
        taken = {}
        thread = threading.Thread(
            target=lambda: taken.update(job=worker.execute_command("NKML.AI.TAKE", 5000)))
        thread.start()
        start = time.monotonic()
        with pytest.raises(redis.ResponseError, match="timed out .a worker took it"):
            conn.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "t", "OUTPUTS", 1, "o",
                                 "TIMEOUT", 300)
        assert time.monotonic() - start < 3
        thread.join(10)
        job_id = taken["job"][0]
        with pytest.raises(redis.ResponseError, match="not pending"):
            worker.execute_command("NKML.AI.DONE", job_id, "OK", codec.encode(np.ones((1, 1), np.float32)))
        assert not conn.exists("o")
        info = conn.execute_command("AI.INFO", "m")
        stats = dict(zip(info[::2], info[1::2]))
        assert stats[b"calls"] == 1 and stats[b"errors"] == 1


def test_bad_outputs_and_bad_input_are_refused(bare):
    with bare.node(bare.addresses[0]) as conn, bare.node(bare.addresses[0]) as worker:
        conn.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"x")
        conn.execute_command("AI.TENSORSET", "t", "FLOAT", 2, "BLOB", np.ones(2, np.float32).tobytes())
        worker.execute_command("NKML.AI.TAKE", 0)
        errors = {}

        def answer_badly():
            job = worker.execute_command("NKML.AI.TAKE", 5000)
            with pytest.raises(redis.ResponseError, match="bad output"):
                worker.execute_command("NKML.AI.DONE", job[0], "OK", b"NKMLgarbage")

        thread = threading.Thread(target=answer_badly)
        thread.start()
        try:
            conn.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "t", "OUTPUTS", 1, "o")
        except redis.ResponseError as exc:
            errors["exec"] = str(exc)
        thread.join(10)
        assert "output 0" in errors["exec"]
        for args, pattern in [
            (("AI.TENSORSET", "u", "FLOAT", 2, "BLOB", b"abc"), "data length does not match"),
            (("AI.TENSORSET", "u", "BOOL", 2, "VALUES", 1, 0), "invalid data type BOOL"),
            (("AI.TENSORSET", "u", "FLOAT", -2), "invalid or negative value"),
            (("AI.TENSORSET", "u", "FLOAT", *([1] * 9)), "at most 8 dimensions"),
            (("AI.TENSORGET", "missing", "META", "BLOB"), "tensor key is empty"),
            (("AI.MODELSTORE", "m2", "OPENVINO", "CPU", "BLOB", b"x"), "unsupported backend OPENVINO"),
            (("AI.MODELEXECUTE", "t", "INPUTS", 1, "t", "OUTPUTS", 1, "o"), "does not hold a model"),
            (("AI.MODELEXECUTE", "m", "INPUTS", 1, "missing", "OUTPUTS", 1, "o"), "input missing: tensor key is empty"),
            (("AI.DAGEXECUTE", "LOAD", 1, "t", "|>", "AI.TENSORGET", "t", "META"), "AI.DAGEXECUTE is not supported"),
            (("AI.SCRIPTEXECUTE", "s", "f", "INPUTS", 1, "t", "ARGS", 1, "a"), "ARGS is not supported"),
        ]:
            with pytest.raises(redis.ResponseError, match=pattern):
                conn.execute_command(*args)
        conn.set("plain", b"not a tensor")
        with pytest.raises(redis.ResponseError, match="not a nekrs_ml tensor"):
            conn.execute_command("AI.TENSORGET", "plain", "META", "BLOB")
        assert conn.ping()


def test_tensors_are_our_wire_format(bare):
    password = Orchestrator(bare.dir).password
    with bare.node(bare.addresses[0]) as conn, Client(bare.addresses, password=password) as ours:
        conn.execute_command("AI.TENSORSET", "v", "INT16", 2, 2, "VALUES", 1, -2, 3, 4)
        assert np.array_equal(ours.get_tensor("v"), np.array([[1, -2], [3, 4]], np.int16))
        assert conn.get("v") == codec.encode(np.array([[1, -2], [3, 4]], np.int16))
        ours.put_tensor("w", np.array([0.5, 2.0], np.float64))
        reply = conn.execute_command("AI.TENSORGET", "w", "META", "VALUES")
        assert reply[:4] == [b"dtype", b"DOUBLE", b"shape", [2]]
        assert [float(v) for v in reply[5]] == [0.5, 2.0]
        assert conn.execute_command("AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") > 0


def test_smartredis_servers_refuse_open_tcp_unless_asked(run_dir):
    with pytest.raises(OrchestratorError, match="--smartredis-tcp"):
        Orchestrator(run_dir, mode="single", transport="tcp", smartredis=True)
    with pytest.raises(OrchestratorError, match="smartredisTcp"):
        Orchestrator(run_dir, mode="cluster", smartredis=True)


@pytest.mark.parametrize("limits,expected", [
    ({"MAX_JOB_BYTES": "1gb\nloadmodule /tmp/planted.so"}, "positive number of bytes"),
    ({"MAX_VALUE_BYTES": 0}, "positive number of bytes"),
    ({"EXECUTE_TIMEOUT": 5}, "not known"),
])
def test_smartredis_limits_are_checked(run_dir, limits, expected):
    with pytest.raises(OrchestratorError, match=expected):
        Orchestrator(run_dir, transport="unix", smartredis=True, smartredis_limits=limits)


def test_cli_prints_the_smartredis_environment(run_dir):
    done = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "db", "start", "--dir", run_dir,
                           "--transport", "unix", "--smartredis"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["smartredis"] is True
    assert info["env"]["SSDB"] == "unix://" + info["addresses"][0][len("unix:"):]
    assert info["env"]["SR_DB_TYPE"] == "Standalone"
    socket_dir = Path(info["addresses"][0][len("unix:"):]).parent
    assert socket_dir.stat().st_mode & 0o077 == 0  # only this user can reach the socket


def test_bench_inference_measures_a_redisai_server_beside_the_worker(smartredis_python):
    """`bench inference --redisai`: SmartRedis clients store the benchmark's TorchScript model
    and call it (put_tensor + run_model + get_tensor) on a server that answers RedisAI's
    commands, here nekrs_ml's own `--smartredis` server and worker."""
    run = CompatRun("single")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "nekrs_ml.cli", "bench", "inference", "--ranks", "1,2",
             "--calls", "5", "--models", "mlp_1_20_1", "--devices", "cpu", "--paths",
             "worker,redisai", "--worker-threads", "1", "--redisai", run.ssdb,
             "--smartredis-python", smartredis_python, "--json"],
            capture_output=True, text=True, timeout=300, cwd="/tmp")
        assert proc.returncode == 0, proc.stderr
        records = json.loads(proc.stdout)
        assert {(r["path"], r["ranks"]) for r in records} == {
            (path, k) for path in ("worker", "redisai") for k in (1, 2)}
        assert all(r["p50_us"] > 0 and r["calls_per_s"] > 0 for r in records)
    finally:
        run.stop()
