"""`nekrs-ml db start|stop|status` in all three modes: servers answer, nothing is left behind,
bad set-ups give errors that say what to do."""

import json
import os
import socket
import subprocess
import sys

import pytest

import nekrs_ml
from nekrs_ml.orchestrator import Orchestrator, pid_alive


def cli(*args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"nekrs-ml {' '.join(args)} failed: {proc.stderr}")
    return proc


@pytest.mark.parametrize("mode,extra", [
    ("single", []), ("single", ["--transport", "unix"]), ("colocated", []),
    ("cluster", ["--shards", "3"]),
], ids=["single-tcp", "single-unix", "colocated", "cluster"])
def test_start_status_stop_leaves_no_process(run_dir, mode, extra):
    info = json.loads(cli("db", "start", "--dir", run_dir, "--mode", mode, *extra).stdout)
    assert info["mode"] == mode and os.path.exists(info["password_file"])
    assert oct(os.stat(info["password_file"]).st_mode & 0o777) == "0o600"
    assert len(info["addresses"]) == (3 if mode == "cluster" else 1)
    if mode == "colocated" or "unix" in extra:
        assert all(a.startswith("unix:") for a in info["addresses"])
    else:
        assert all(a.startswith("127.0.0.1:") for a in info["addresses"])
    pids = [s["pid"] for s in info["servers"]]
    assert all(pid_alive(p) for p in pids)

    env = dict(os.environ, **info["env"])
    check = subprocess.run(
        [sys.executable, "-c", "import nekrs_ml, numpy as n; c = nekrs_ml.Client.from_env(); "
         "c.put_tensor('{r0}:x', n.ones(3)); print(c.get_tensor('{r0}:x').sum())"],
        env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "3.0"

    status = json.loads(cli("db", "status", "--dir", run_dir).stdout)
    assert sum(s["keys"] for s in status["servers"]) == 1
    assert all(s["running"] and s["maxmemory_bytes"] > 0 for s in status["servers"])

    stopped = json.loads(cli("db", "stop", "--dir", run_dir).stdout)["stopped"]
    assert sorted(stopped) == sorted(info["addresses"])
    assert not any(pid_alive(p) for p in pids)


def test_servers_have_no_persistence_and_a_memory_cap(run_dir):
    orch = Orchestrator(run_dir, maxmemory="64mb")
    orch.start()
    client = nekrs_ml.Client(orch.addresses, password=orch.password)
    config = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
              for k, v in client.redis.config_get("*").items()}
    assert config["save"] == "" and config["appendonly"] == "no"
    assert int(config["maxmemory"]) == 64 * 1024 * 1024
    assert config["maxmemory-policy"] == "noeviction"
    assert config["bind"].startswith("127.0.0.1")


def test_missing_redis_server_says_how_to_install(run_dir):
    proc = cli("db", "start", "--dir", run_dir, "--redis-server", "/nonexistent/redis-server", check=False)
    assert proc.returncode != 0 and "apt-get install redis-server" in proc.stderr


def test_taken_port_is_reported(run_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = cli("db", "start", "--dir", run_dir, "--port", str(port), check=False)
    assert proc.returncode != 0 and f"port {port}" in proc.stderr and "--port" in proc.stderr


def test_running_and_stale_run_directories_are_refused(run_dir):
    info = json.loads(cli("db", "start", "--dir", run_dir).stdout)
    again = cli("db", "start", "--dir", run_dir, check=False)
    assert again.returncode != 0 and "db stop --dir" in again.stderr
    # simulate a crash: kill the server, keep the state
    os.kill(info["servers"][0]["pid"], 9)
    stale = cli("db", "start", "--dir", run_dir, check=False)
    assert stale.returncode != 0 and "did not stop cleanly" in stale.stderr
    cli("db", "stop", "--dir", run_dir)
    fresh = json.loads(cli("db", "start", "--dir", run_dir).stdout)
    assert pid_alive(fresh["servers"][0]["pid"])


def test_cluster_needs_three_shards(run_dir):
    proc = cli("db", "start", "--dir", run_dir, "--mode", "cluster", "--shards", "2", check=False)
    assert proc.returncode != 0 and "at least 3" in proc.stderr


def test_status_without_orchestrator_says_how_to_start(run_dir):
    proc = cli("db", "status", "--dir", run_dir, check=False)
    assert proc.returncode != 0 and "db start" in proc.stderr
