"""`nekrs-ml db start --smartredis` servers with their workers, and SmartRedis's own client in a
virtual environment of its own (it needs numpy < 2)."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from nekrs_ml.orchestrator import Orchestrator

from .paths import short_tmpdir
from .waiting import wait_for


PROGRAM = Path(__file__).with_name("smartredis_program.py")


SMARTREDIS = "smartredis==0.6.1"


# --- the SmartRedis environment ----------------------------------------------------------------
@pytest.fixture(scope="session")
def smartredis_python(request) -> str:
    venv = Path(request.config.cache.mkdir("smartredis-0.6.1-venv"))
    python = venv / "bin" / "python"
    ready = venv / "ready"
    if not ready.exists():
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", SMARTREDIS, "numpy<2"]]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.skip(f"cannot install {SMARTREDIS} with numpy<2 in a virtual environment "
                            f"({' '.join(argv[:4])} failed: {done.stderr.strip()[-300:]})")
        ready.write_text("ok\n")
    return str(python)


# --- servers and workers -----------------------------------------------------------------------
class CompatRun:
    """`nekrs-ml db start --smartredis` plus `nekrs-ml serve --smartredis`, always stopped."""

    def __init__(self, kind: str, workers: bool = True, limits=None, persistence: bool = False,
                 maxmemory: str = "256mb"):
        self.kind = kind
        self.dir = short_tmpdir(f"nkml-sr-{kind}-")
        cluster = kind == "cluster"
        self.options = dict(mode=kind, transport="tcp" if cluster else "unix", shards=3,
                            maxmemory=maxmemory, smartredis=True, smartredis_tcp=cluster,
                            smartredis_limits=limits, persistence=persistence)
        self.worker = None
        try:
            self.start_servers()
            if workers:
                self.start_worker()
        except BaseException:
            self.stop()
            raise

    def start_servers(self):
        self.orchestrator = Orchestrator(self.dir, **self.options)
        self.info = self.orchestrator.start()
        self.addresses = self.info["addresses"]
        self.ssdb = self.info["env"]["SSDB"]

    def restart_servers(self):
        """Stops the servers (a clean shutdown) and starts them again on the same directory."""
        Orchestrator.stop_dir(self.dir)
        self.start_servers()

    def start_worker(self):
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "nekrs_ml.cli", "serve", "--dir", self.dir, "--smartredis",
             "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        def connected():
            assert self.worker.poll() is None, self.worker.stdout.read()
            return all(self.workers(address) for address in self.addresses)
        wait_for(connected, 60, "the worker to connect")

    def node(self, address: str) -> redis.Redis:
        if address.startswith("unix:"):
            return redis.Redis(unix_socket_path=address[5:])
        host, port = address.rsplit(":", 1)
        return redis.Redis(host=host, port=int(port))

    def workers(self, address: str) -> int:
        return self.jobs(address, "workers")

    def jobs(self, address: str, field: str) -> int:
        """A count of NKML.AI.WORKERS: workers, queued or running (jobs taken, not answered)."""
        with self.node(address) as conn:
            reply = conn.execute_command("NKML.AI.WORKERS")
        return dict(zip(reply[::2], reply[1::2]))[field.encode()]

    def stop_worker(self, sig=signal.SIGTERM) -> str:
        if self.worker is None:
            return ""
        if self.worker.poll() is None:
            self.worker.send_signal(sig)
        try:
            out, _ = self.worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            out, _ = self.worker.communicate()
        self.worker = None
        return out

    def stop(self):
        try:
            self.stop_worker(signal.SIGKILL)
        finally:
            Orchestrator.stop_dir(self.dir)


@pytest.fixture
def bare():
    run = CompatRun("single", workers=False)
    try:
        yield run
    finally:
        run.stop()
