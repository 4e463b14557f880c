"""Stops every process of a run when its launcher dies, however it dies (SIGKILL included).

The launcher starts one watchdog process and keeps the write end of a pipe to it; the
watchdog reads from the read end. Over the pipe the launcher names the process groups it
starts (``watch PGID START``) and stops (``forget PGID``) and, at a normal end, ``done``. When
the pipe closes without ``done`` (the kernel closes it when the launcher dies), the watchdog
sends SIGTERM to every group still watched, SIGKILL after ``GRACE`` seconds, stops the run's
servers and writes a report saying so. Parts also get SIGTERM straight from the kernel when the
launcher dies (``die_with_parent``).

    main([RUN_DIR, DB_DIR])      (stdin: the pipe; started by ``Guard``)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from ..processes import process_start_time

GRACE = 10.0  # s between SIGTERM and SIGKILL of the parts
SERVER_STOP_TIMEOUT = 5.0
WATCHDOG_LOG = "watchdog.log"




def start_time(pid: int) -> Optional[int]:
    return process_start_time(pid)


class Guard:
    """The launcher's end: starts the watchdog and tells it what to watch."""

    def __init__(self, run_dir: Path, db_dir: Path):
        read_end, write_end = os.pipe()  # both close-on-exec: no part inherits the write end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from nekrs_ml.launch.watchdog import main; "
                 "sys.exit(main())", str(run_dir), str(db_dir)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                start_new_session=True)  # Ctrl-C and a closing terminal are the launcher's
        finally:
            os.close(read_end)
        self.pipe = os.fdopen(write_end, "w", buffering=1)

    def _say(self, line: str) -> None:
        try:
            self.pipe.write(line + "\n")
        except (OSError, ValueError):  # the watchdog is gone: the kernel's signals remain
            pass

    def watch(self, pgid: int) -> None:
        self._say(f"watch {pgid} {start_time(pgid) or 0}")

    def forget(self, pgid: int) -> None:
        self._say(f"forget {pgid}")

    def close(self, timeout: float = 30.0) -> None:
        """A normal end: the watchdog sweeps what is left and exits."""
        self._say("done")
        try:
            self.pipe.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# --- the watchdog process -------------------------------------------------------------------
def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_groups(groups: Dict[int, int], sig: int) -> None:
    for pgid, started in groups.items():
        leader = start_time(pgid)
        if leader is not None and started and leader != started:
            continue  # the leader's pid was reused by another process: not ours
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_groups(groups: Dict[int, int]) -> None:
    signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(group_alive(g) for g in groups):
        time.sleep(0.1)
    signal_groups(groups, signal.SIGKILL)


def watch(lines, run_dir: Path, db_dir: Path) -> bool:
    """Follows the launcher's messages until the pipe closes; True when it ended normally."""
    groups: Dict[int, int] = {}
    normal = False
    for line in lines:
        words = line.split()
        if words[:1] == ["watch"] and len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            groups[int(words[1])] = int(words[2])
        elif words[:1] == ["forget"] and len(words) == 2 and words[1].isdigit():
            groups.pop(int(words[1]), None)
        elif words == ["done"]:
            normal = True
    if not normal:
        log(run_dir, f"the launcher died; stopping process groups {sorted(groups)} and the servers")
    stop_groups(groups)
    from ..orchestrator import Orchestrator

    try:
        Orchestrator.stop_dir(db_dir, timeout=SERVER_STOP_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - say why, the groups are stopped anyway
        log(run_dir, f"could not stop the servers of {db_dir}: {exc}")
    if not normal:
        write_report(run_dir)
    return normal


def log(run_dir: Path, text: str) -> None:
    try:
        with open(run_dir / WATCHDOG_LOG, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
    except OSError:  # nothing may keep the watchdog from stopping the run
        pass


def write_report(run_dir: Path) -> None:
    """The launcher could not write its report: say at least what happened."""
    report = run_dir / "report.json"
    if report.exists():
        return
    try:
        report.write_text(json.dumps({
            "status": "launcher",
            "message": "the launcher was killed; its watchdog stopped every part and the servers",
            "exit_codes": {}, "warnings": [], "wall_seconds": None}, indent=2) + "\n")
    except OSError as exc:
        log(run_dir, f"could not write {report}: {exc}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir, db_dir = Path(argv[0]), Path(argv[1])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end counts
    watch(sys.stdin, run_dir, db_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
