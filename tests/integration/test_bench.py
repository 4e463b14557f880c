"""The benchmarks run and print records of the documented shape (small sizes; no timing asserted)."""

import json
import subprocess
import sys

import pytest


def bench(*args):
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "bench", *args, "--json"],
                          capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_transfer_records():
    records = bench("transfer", "--sizes", "4096,102400", "--bytes-per-case", "409600",
                    "--repeats", "2", "--transports", "tcp,unix")
    combos = {(r["client"], r["transport"], r["op"], r["size_bytes"]) for r in records}
    assert len(combos) == len(records) == 3 * 2 * 2 * 2
    for r in records:
        base = {"client", "transport", "op", "size_bytes", "bytes_per_s", "machine"}
        if r["client"] == "redis-benchmark":
            assert set(r) == base
        else:
            assert set(r) == base | {"vs_redis_benchmark", "rounds_vs_redis_benchmark"}
            assert len(r["rounds_vs_redis_benchmark"]) == 2
            assert r["vs_redis_benchmark"] == pytest.approx(
                sum(r["rounds_vs_redis_benchmark"]) / 2)  # the median of two
        assert r["client"] in ("cpp", "python", "redis-benchmark") and r["bytes_per_s"] > 0


def test_stream_records():
    records = bench("stream", "--points", "1000", "--puts", "20", "--transports", "tcp")
    ops = {r["op"]: r for r in records}
    timed = ("bare_put", "snapshot_put", "snapshot_put_consumed", "snapshot_put_dropping")
    assert set(ops) == {*timed, "trainer_ingest"}
    assert ops["trainer_ingest"]["snapshots"] == 25 and ops["trainer_ingest"]["samples_per_s"] > 0
    assert all(ops[op]["p50_us"] > 0 for op in timed)
    assert all(r["machine"]["cores"] >= 1 and r["machine"]["cpu"] for r in records)



def handoff(*paths):
    return bench("handoff", "--sizes", "65536", "--producers", "1,2", "--bytes-per-case", "262144",
                 "--min-steps", "4", "--queue", "2", "--paths", ",".join(paths))


def check_handoff_records(records, paths):
    assert {(r["path"], r["producers"]) for r in records} == {
        (path, producers) for path in paths for producers in (1, 2)}
    assert len(records) == 2 * len(paths)
    for r in records:
        assert {"path", "producers", "size_bytes", "bytes_per_s", "p50_us", "steps"} <= set(r)
        assert r["size_bytes"] == 65536 and r["steps"] == 4
        assert r["bytes_per_s"] > 0 and r["p50_us"] > 0


def test_handoff_records():
    records = handoff("nekrs_ml", "putget")
    check_handoff_records(records, ["nekrs_ml", "putget"])
    for r in records:
        if r["path"] == "nekrs_ml":
            assert r["samples_per_s"] > 0 and r["reader_samples_per_s"] > 0


def test_handoff_adios2_sst_records():
    pytest.importorskip("adios2", reason="adios2 is not installed (pip install adios2, the "
                        "test extra): the adios2-sst path of bench handoff is not measured")
    check_handoff_records(handoff("adios2-sst"), ["adios2-sst"])


INFERENCE_KEYS = {"model", "path", "ranks", "device", "p50_us", "p99_us", "mean_us",
                  "calls_per_s", "machine"}


def test_inference_records_with_rounds():
    records = bench("inference", "--ranks", "1,2", "--calls", "5", "--rounds", "2", "--models",
                    "mlp_1_20_1", "--devices", "cpu", "--paths", "forward,roundtrip,worker",
                    "--worker-threads", "1")
    assert {(r["path"], r["ranks"]) for r in records} == {
        (path, k) for path in ("forward", "roundtrip", "worker") for k in (1, 2)}
    for r in records:
        assert set(r) == INFERENCE_KEYS | {"rounds_p50_us"}
        assert len(r["rounds_p50_us"]) == 2 and r["p50_us"] > 0
        assert min(r["rounds_p50_us"]) <= r["p50_us"] <= max(r["rounds_p50_us"])
        assert r["device"] == ("host" if r["path"] == "roundtrip" else "cpu")


def test_inference_refuses_bad_paths_and_a_redisai_server_without_smartredis():
    for args, message in [(["--paths", "worker,tensorflow"], "unknown path(s) tensorflow"),
                          (["--redisai", "unix:///tmp/none.sock"], "--redisai needs "
                                                                   "--smartredis-python"),
                          (["--rounds", "0"], "--rounds must be at least 1")]:
        proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "bench", "inference", *args],
                              capture_output=True, text=True, timeout=120, cwd="/tmp")
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
