"""Nothing planted in a run directory is trusted: a password, a state file or a directory that
another user could have written is refused with what to do; every value of redis.conf is
checked; the files of the servers (persistence included) are private; a run directory holds one
live orchestrator, and `db stop` only signals the servers it started. Real redis-server."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import nekrs_ml
from nekrs_ml.errors import OrchestratorError
from nekrs_ml.orchestrator import Orchestrator, node_name, pid_alive, process_start_time

OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
TOKEN = "ab" * 32


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nekrs_ml.cli", *args], capture_output=True,
                          text=True, timeout=120)


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def no_server_configured(run_dir) -> bool:
    """No state recorded and no redis.conf that mentions a planted directive."""
    configs = list(Path(run_dir).rglob("redis.conf"))
    return (not list(Path(run_dir).glob("*/state.json"))
            and not any("loadmodule" in c.read_text() for c in configs))


def plant_password(run_dir, text: str, mode: int = 0o600, uid=None) -> Path:
    path = Path(run_dir, "password")
    path.write_text(text)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


@pytest.mark.parametrize("text,mode,uid,expected", [
    (f"{TOKEN}\nloadmodule /tmp/planted.so\n", 0o600, None, "single password"),
    (f"{TOKEN}\n\n", 0o600, None, "single password"),
    (f"{TOKEN} loadmodule /tmp/planted.so\n", 0o600, None, "single password"),
    ("short\n", 0o600, None, "single password"),
    ("", 0o600, None, "single password"),
    (f"{TOKEN}\n", 0o644, None, "mode 644"),
    (f"{TOKEN}\n", 0o620, None, "mode 620"),
    pytest.param(f"{TOKEN}\n", 0o600, OTHER_UID, f"uid {OTHER_UID}", marks=as_root),
], ids=["extra-line", "blank-line", "two-words", "short", "empty", "world-readable",
        "group-writable", "other-owner"])
def test_a_planted_password_file_is_refused(run_dir, text, mode, uid, expected):
    planted = plant_password(run_dir, text, mode, uid)
    proc = cli("db", "start", "--dir", run_dir)
    assert proc.returncode == 2, proc.stdout
    assert str(planted) in proc.stderr and expected in proc.stderr, proc.stderr
    assert "remove it" in proc.stderr
    assert no_server_configured(run_dir)


def test_a_password_link_is_refused(run_dir, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text(f"{TOKEN}\n")
    os.chmod(target, 0o600)
    os.symlink(target, Path(run_dir, "password"))
    proc = cli("db", "start", "--dir", run_dir)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr, proc.stderr
    assert no_server_configured(run_dir)


def test_our_own_password_file_is_reused(run_dir):
    plant_password(run_dir, f"{TOKEN}\n")
    orch = Orchestrator(run_dir, maxmemory="32mb")
    orch.start()
    try:
        assert orch.password == TOKEN
        assert nekrs_ml.Client(orch.addresses, password=TOKEN).redis.ping()
    finally:
        orch.stop()


@as_root
def test_a_run_directory_of_another_user_is_refused(run_dir):
    os.chown(run_dir, OTHER_UID, -1)
    proc = cli("db", "start", "--dir", run_dir)
    assert proc.returncode == 2 and f"belongs to uid {OTHER_UID}" in proc.stderr, proc.stderr
    assert not list(Path(run_dir).iterdir())


@as_root
def test_a_state_file_of_another_user_is_never_signalled(run_dir):
    """`db stop` would SIGTERM the pids of a state file: a planted one is refused."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        node_dir = Path(run_dir, node_name())
        node_dir.mkdir(mode=0o700)
        state = node_dir / "state.json"
        state.write_text(json.dumps({"mode": "single", "node": node_name(), "namespace": "n",
                                     "servers": [{"name": "redis", "address": "x", "pid": victim.pid,
                                                  "config": "c", "log": "l"}]}))
        os.chmod(state, 0o600)
        os.chown(state, OTHER_UID, -1)
        proc = cli("db", "stop", "--dir", run_dir)
        assert proc.returncode == 2 and f"uid {OTHER_UID}" in proc.stderr, proc.stderr
        assert victim.poll() is None
        state.unlink()
    finally:
        victim.kill()
        victim.wait()


def test_a_run_directory_others_could_write_is_refused(run_dir):
    os.chmod(run_dir, 0o777)
    Path(run_dir, "password").write_text(f"{TOKEN}\n")  # could be anyone's
    proc = cli("db", "start", "--dir", run_dir)
    assert proc.returncode == 2 and "writable by group or others" in proc.stderr, proc.stderr
    assert no_server_configured(run_dir)


@as_root
@pytest.mark.parametrize("planted", ["nodes.conf", "dump.rdb"])
def test_planted_server_files_are_refused(run_dir, planted):
    node_dir = Path(run_dir, node_name())
    node_dir.mkdir(mode=0o700)
    Path(node_dir, planted).write_bytes(b"planted")
    os.chown(Path(node_dir, planted), OTHER_UID, -1)
    proc = cli("db", "start", "--dir", run_dir, "--persist")
    assert proc.returncode == 2 and f"{planted} belongs to uid {OTHER_UID}" in proc.stderr, \
        proc.stderr
    assert no_server_configured(run_dir)


def test_every_file_of_a_run_is_private(run_dir):
    os.chmod(run_dir, 0o755)  # an existing directory of ours is closed too
    orch = Orchestrator(run_dir, mode="single", transport="unix", maxmemory="32mb")
    orch.start()
    try:
        node_dir = Path(run_dir, node_name())
        assert mode_of(run_dir) == 0o700 and mode_of(node_dir) == 0o700
        for name in ("password", f"{node_name()}/state.json", f"{node_name()}/redis.conf",
                     f"{node_name()}/redis.log"):
            assert mode_of(Path(run_dir, name)) == 0o600, name
        assert mode_of(node_dir / "redis.sock") & 0o077 == 0
    finally:
        orch.stop()


def test_persistence_files_are_private(run_dir):
    orch = Orchestrator(run_dir, maxmemory="32mb", persistence=True)
    orch.start()
    try:
        client = nekrs_ml.Client(orch.addresses, password=orch.password)
        client.set_string("{r0}:kept", "secret data")
        client.redis.save()  # the RDB dump; the AOF is written as the key is set
        node_dir = Path(run_dir, node_name())
        written = [p for p in node_dir.rglob("*") if p.name.startswith(("dump", "appendonly"))]
        assert any(p.name == "dump.rdb" for p in written), written
        assert any(p.is_file() and ".aof" in p.name for p in written), written
        for path in written:
            assert mode_of(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode_of(path)))
    finally:
        orch.stop()


@pytest.mark.parametrize("option,value,expected", [
    ("maxmemory", "1gb\nloadmodule /tmp/planted.so", "not a Redis memory size"),
    ("maxmemory", "lots", "not a Redis memory size"),
    ("bind", "127.0.0.1\nloadmodule /tmp/planted.so", "not an IP address"),
    ("bind", "127.0.0.1 0.0.0.0", "not an IP address"),
])
def test_every_configuration_value_is_checked(run_dir, option, value, expected):
    with pytest.raises(OrchestratorError, match=expected):
        Orchestrator(run_dir, **{option: value}).start()
    assert no_server_configured(run_dir)


@pytest.mark.parametrize("name", ['run"dir', "run\ndir", "run\\dir"])
def test_a_run_directory_that_redis_conf_cannot_quote_is_refused(run_dir, name):
    proc = cli("db", "start", "--dir", str(Path(run_dir, name)))
    assert proc.returncode == 2 and "quote, a backslash or a control character" in proc.stderr
    assert not list(Path(run_dir).iterdir())


def test_a_second_start_is_refused_before_anything_changes(run_dir):
    first = Orchestrator(run_dir, maxmemory="32mb")
    info = first.start()
    try:
        state = Path(run_dir, node_name(), "state.json")
        before = state.read_bytes()
        proc = cli("db", "start", "--dir", run_dir)
        assert proc.returncode == 2 and "in use by a live run" in proc.stderr, proc.stderr
        assert f"redis-server pids {info['servers'][0]['pid']}" in proc.stderr
        assert "db stop --dir" in proc.stderr
        assert state.read_bytes() == before and pid_alive(info["servers"][0]["pid"])
    finally:
        first.stop()
    assert json.loads(cli("db", "start", "--dir", run_dir).stdout)["servers"]  # free again
    Orchestrator.stop_dir(run_dir)


def test_stop_never_signals_a_process_that_reused_a_pid(run_dir, tmp_path):
    """A stale state file whose pid now belongs to another redis-server (here: the server of
    another run, its start time differing) leaves that server alone."""
    other = Orchestrator(tmp_path / "other", maxmemory="32mb")
    other_pid = other.start()["servers"][0]["pid"]
    try:
        mine = Orchestrator(run_dir, maxmemory="32mb")
        mine.start()
        state_path = Path(run_dir, node_name(), "state.json")
        state = json.loads(state_path.read_text())
        mine_pid = state["servers"][0]["pid"]
        Orchestrator._terminate(Orchestrator.states(run_dir)[0].servers)  # a crash: state stays
        state["servers"][0]["pid"] = other_pid  # ... and its pid is reused
        state["servers"][0]["start_time"] = process_start_time(other_pid) - 1
        state_path.write_text(json.dumps(state))
        proc = cli("db", "stop", "--dir", run_dir)
        assert proc.returncode == 0, proc.stderr
        assert pid_alive(other_pid) and not pid_alive(mine_pid)
        assert not state_path.exists()
    finally:
        other.stop()
