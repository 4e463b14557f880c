"""`nekrs-ml run` as the workflow tests drive it: a case with some keys replaced, the run in its
own process group, its report, and the processes it must leave behind (none)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nekrs_ml.orchestrator import Orchestrator, pid_alive

from .waiting import wait_for

CASES = Path(__file__).resolve().parents[2] / "cases"
CASE = CASES / "reproducer" / "channel.par"


def write_case(directory: str, overrides: dict, base: Path = CASE) -> Path:
    """The demo case with some keys replaced (section -> {key: value})."""
    lines, section = [], None
    pending = {s.lower(): dict(v) for s, v in overrides.items()}
    for line in base.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            if section in pending:
                lines += [f"{k} = {v}" for k, v in pending.pop(section).items()]
            section = stripped.strip("[]").lower()
        elif "=" in stripped and section in pending:
            key = stripped.split("=")[0].strip()
            if key in pending[section]:
                line = f"{key} = {pending[section].pop(key)}"
        lines.append(line)
    if section in pending:
        lines += [f"{k} = {v}" for k, v in pending.pop(section).items()]
    path = Path(directory) / "case.par"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_run(case: Path, run_dir: str, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nekrs_ml.cli", "run", str(case), "--solver", "reproducer",
         "--run-dir", run_dir, *extra],
        cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"nekrs-ml run did not finish within {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def report(run_dir: str) -> dict:
    """report.json, which must be strict JSON (no NaN or Infinity)."""
    def refuse(name):
        raise AssertionError(f"report.json is not strict JSON: {name}")
    return json.loads((Path(run_dir) / "report.json").read_text(), parse_constant=refuse)


def no_servers_left(run_dir: str) -> bool:
    states = Orchestrator.states(Path(run_dir) / "db")
    return not states and not [p for p in our_processes(run_dir)]


def our_processes(run_dir: str):
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if run_dir in cmdline and pid_alive(int(entry.name)):
                yield entry.name


TRAINER_STARTED = (lambda run_dir: (Path(run_dir) / "trainer_history.jsonl").exists(),
                   "the trainer to start")


SOLVER_STARTED = (lambda run_dir: list(processes_matching(" reproduce ", run_dir)),
                  "the solver to start")


def kill_during_run(case: Path, run_dir: str, started, part: str, settle: float = 0.0,
                    timeout: float = 180):
    """Runs the case, SIGKILLs every process of `part` (" train ", " serve ", ...) once
    `started` holds (and `settle` s more), and lets the run end: (exit code, output, pids)."""
    proc = start_run(case, run_dir)
    try:
        ready, what = started
        wait_for(lambda: ready(run_dir), 120, what)
        time.sleep(settle)
        killed = [int(pid) for pid in processes_matching(part, run_dir)]
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        code, out = finish(proc, timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, out, killed


def processes_matching(fragment: str, run_dir: str):
    """nekrs_ml parts (not mpiexec) of the run in run_dir whose command line holds `fragment`
    (other runs on the machine are left alone)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if ("nekrs_ml.cli" in cmdline and fragment in cmdline and run_dir in cmdline
                    and "mpiexec" not in cmdline):
                yield entry.name


TRAIN_INFER = CASE.parent / "channel_train_infer.par"


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
