"""`nekrs-ml run` owns its run directory and leaves no process behind, whatever happens to it:
a second run on a live run's directory is refused before it touches anything; a second
Ctrl-C while stopping, SIGHUP (a closed terminal) and SIGKILL of the launcher all end with every
redis-server, mpiexec, rank and worker of the run gone within 30 s. Real servers, real ranks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nekrs_ml.orchestrator import Orchestrator
from nekrs_ml.rundir import RunLock
from test_run import CASE, TRAIN_INFER, finish, report, start_run, wait_for, write_case

ORPHAN_BOUND = 30.0  # s within which every process of a run must be gone


def processes_of(run_dir: str):
    """Live processes (not zombies) whose working directory, command line or environment
    names the run directory: servers (cwd in run_dir/db), mpiexec, ranks, workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cwd = os.readlink(entry / "cwd")
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if cwd.startswith(run_dir) or run_dir.encode() in text:
            found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                          .decode(errors="replace")[:120]))
    return found


def assert_nothing_left(run_dir: str, since: float) -> float:
    """Waits until no process of the run is left; returns how long that took after ``since``."""
    deadline = since + ORPHAN_BOUND
    while time.monotonic() < deadline:
        if not processes_of(run_dir):
            return time.monotonic() - since
        time.sleep(0.25)
    left = processes_of(run_dir)
    for pid, _ in left:  # do not leak them into the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    raise AssertionError(f"processes of the run still alive {ORPHAN_BOUND:g} s later: {left}")


def long_run(run_dir: str, base: Path = CASE) -> subprocess.Popen:
    case = write_case(run_dir, {"REPRODUCER": {"steps": 20000}}, base=base)
    proc = start_run(case, run_dir)
    wait_for(lambda: Path(run_dir, "trainer_history.jsonl").exists(), 120, "the trainer to start")
    assert any("redis" in cmd for _, cmd in processes_of(run_dir))
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_second_run_on_a_live_run_directory_touches_nothing(run_dir):
    proc = long_run(run_dir)
    try:
        servers = [s.pid for st in Orchestrator.states(Path(run_dir, "db")) for s in st.servers]
        logs = {name: Path(run_dir, name).stat().st_size for name in ("solver.log", "trainer.log")}
        second = subprocess.run(
            [sys.executable, "-m", "nekrs_ml.cli", "run", str(CASE), "--run-dir", run_dir],
            cwd=run_dir, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "in use by a live run" in second.stderr and "--run-dir" in second.stderr
        assert f"pid {proc.pid}" in second.stderr
        for name in logs:  # still there, still growing
            assert Path(run_dir, name).stat().st_size >= logs[name]
        assert proc.poll() is None
        assert all(os.path.exists(f"/proc/{pid}") for pid in servers)
        os.kill(proc.pid, signal.SIGINT)
        code, out = finish(proc, timeout=120)
    finally:
        kill_group(proc)
    assert code == 130 and report(run_dir)["status"] == "interrupted", out[-2000:]
    assert_nothing_left(run_dir, time.monotonic())


def test_a_second_ctrl_c_hurries_the_stop_and_still_reports(run_dir):
    proc = long_run(run_dir)
    try:
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.3)  # the launcher is stopping the parts now
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGINT)
        code, out = finish(proc, timeout=60)
        stopped = time.monotonic()
    finally:
        kill_group(proc)
    assert code == 130, out[-3000:]
    assert "SIGINT while stopping" in out
    data = report(run_dir)
    assert data["status"] == "interrupted" and set(data["exit_codes"]) == {"trainer", "solver"}
    assert_nothing_left(run_dir, stopped)


def test_sighup_stops_the_run_like_sigterm(run_dir):
    proc = long_run(run_dir)
    try:
        os.kill(proc.pid, signal.SIGHUP)
        code, out = finish(proc, timeout=120)
        stopped = time.monotonic()
    finally:
        kill_group(proc)
    assert code == 130 and report(run_dir)["status"] == "interrupted", out[-3000:]
    assert_nothing_left(run_dir, stopped)


@pytest.mark.parametrize("case", [CASE, TRAIN_INFER], ids=["train", "train+infer"])
def test_a_killed_launcher_leaves_no_process(run_dir, case):
    proc = long_run(run_dir, case)
    if case == TRAIN_INFER:
        assert any(" serve " in cmd for _, cmd in processes_of(run_dir))
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: its parts are in other groups
        proc.wait(timeout=10)
        killed = time.monotonic()
        took = assert_nothing_left(run_dir, killed)
    finally:
        kill_group(proc)
    print(f"every process of the killed run was gone {took:.1f} s after SIGKILL")
    data = json.loads(Path(run_dir, "report.json").read_text())
    assert data["status"] == "launcher" and "killed" in data["message"]
    assert not Orchestrator.states(Path(run_dir, "db"))
    RunLock(Path(run_dir, "run.lock"), "run directory").acquire().release()  # free again
