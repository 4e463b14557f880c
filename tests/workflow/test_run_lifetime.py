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
from support.runs import CASE, TRAIN_INFER, assert_nothing_left, finish, processes_of, report, start_run, write_case
from support.waiting import wait_for

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
