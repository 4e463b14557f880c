"""AOTInductor packages compiled beside the training loop.

When the run evaluates the model in the solver's process (``inferenceBackend = inprocess``),
each new graph the trainer publishes needs its package (nekrs_ml.models.aot), which takes tens of
seconds to compile. A ``nekrs-ml compile`` process does it while the loop goes on training; new
versions of a graph that already has its package need nothing (the solver swaps the weights).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Callable, Optional, Set, Tuple


class BackgroundCompiler:
    def __init__(self, ns: str, model: str, device: str, log: Callable[[str], None]):
        self.ns, self.model, self.device, self.log = ns, model, device, log
        self.process: Optional[subprocess.Popen] = None
        self.running: Optional[Tuple[int, str]] = None  # (version, graph) being compiled
        self.pending: Optional[Tuple[int, str]] = None  # the newest graph waiting for its turn
        self.done: Set[str] = set()

    def request(self, version: int, graph: str) -> None:
        """Compiles the package of ``graph`` (taken from ``version``) unless done or under way."""
        self.poll()
        if graph in self.done or (self.running and self.running[1] == graph):
            return
        if self.process is not None:
            self.pending = (version, graph)
            return
        self._start(version, graph)

    def poll(self) -> None:
        """Reaps a finished compilation and starts the pending one."""
        if self.process is None or self.process.poll() is None:
            return
        version, graph = self.running
        if self.process.returncode == 0:
            self.done.add(graph)
        else:
            self.log(f"compiling the package of {self.model} v{version} failed (exit "
                     f"{self.process.returncode}); in-process inference keeps the previous "
                     f"version; run `nekrs-ml compile --model {self.model}` to see why")
        self.process, self.running = None, None
        if self.pending and self.pending[1] not in self.done:
            pending, self.pending = self.pending, None
            self._start(*pending)

    def close(self, wait: float, stopping: Callable[[], bool] = lambda: False) -> None:
        """Lets the running (and pending) compilation finish for up to ``wait`` seconds, so the
        final model reaches in-process users, then stops whatever is left; a signal to the
        trainer (``stopping``) ends the wait at once."""
        deadline = time.monotonic() + max(0.0, wait)
        while self.process is not None and time.monotonic() < deadline and not stopping():
            self.poll()
            time.sleep(0.1)
        if self.process is not None:
            self.log(f"stopping the compilation of {self.model} v{self.running[0]} (still running "
                     f"after {wait:.0f} s)")
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process, self.running, self.pending = None, None, None

    def _start(self, version: int, graph: str) -> None:
        self.log(f"compiling the in-process package of {self.model} v{version} (graph {graph}) "
                 f"for {self.device} in the background")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nekrs_ml", "compile", "--model", self.model, "--version",
             str(version), "--device", self.device, "--namespace", self.ns],
            stdout=subprocess.DEVNULL)
        self.running = (version, graph)
