"""Process supervision: each part (solver, trainer) runs in its own process group so that it and
every rank under it can be stopped together, also when the launcher itself fails: the kernel
sends each part SIGTERM when the launcher dies, and the launcher's watchdog (``Supervisor``'s
guard) stops every group still running when the launcher is gone. A second signal while the
parts are stopping (``Supervisor.hurry``) cuts their grace period short."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Dict, List, Optional

from ..processes import die_with_parent
from ..rundir import open_log
from .watchdog import Guard


class Supervisor:
    """What the parts of one run share: the watchdog that stops them should the launcher die
    (None: nothing watches them), and whether their stop is hurried."""

    def __init__(self, guard: Optional[Guard] = None):
        self.guard = guard
        self.hurried = False

    def hurry(self) -> None:
        """Stops waiting for the parts' clean exit: the next stop kills at once."""
        self.hurried = True


class Part:
    """One supervised command (usually an mpiexec) with its log file."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], cwd: str, log_path: str,
                 supervisor: Optional[Supervisor] = None):
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self._log = open_log(log_path)
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=die_with_parent())
        self.started = time.monotonic()
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.guard = self.supervisor.guard
        if self.guard is not None:
            self.guard.watch(self.process.pid)  # its own group: the pid is the pgid

    def restarted(self) -> "Part":
        """The same command started again (its log appended to); this one is swept first."""
        self.stop(grace=0.0)
        return Part(self.name, self.argv, self.env, self.cwd, self.log_path, self.supervisor)

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the whole group, without waiting (stop() waits): several parts stop
        together when each is sent this first."""
        if self.running:
            self._signal(signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM to the whole group, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.running:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.running and time.monotonic() < deadline and not self.supervisor.hurried:
                time.sleep(0.05)
        # ranks may outlive a dead mpiexec: always sweep the group
        self._signal(signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        if self.guard is not None and self.process.returncode is not None:
            self.guard.forget(self.process.pid)
        return self.process.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:]).rstrip()
        except OSError:
            return ""
