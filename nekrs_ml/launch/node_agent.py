"""`nekrs-ml node`: the node agent of a multi-node run, one per host, started by the launcher
with one rank per host under the site's own launcher (mpiexec), so no ssh is assumed.

The agent starts this host's co-located server in the run's database directory (shared by the
hosts); for a case that infers (`--case`) it deploys the case's `deployModel` on that server and
starts the case's `workers` model workers of this host. Then it writes `<host>/ready` there,
which is how the launcher sees the host ready, and watches the server and
- stops it and exits 0 on SIGTERM / SIGINT (the launcher stopping the run);
- exits 3 naming this host when the server dies or is stopped (SIGSTOP): mpiexec then stops
  the other agents and the launcher ends the run with that message;
- takes the server with it when the agent itself is killed: the kernel sends the server
  SIGTERM when its parent dies (PR_SET_PDEATHSIG), so no server outlives its agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import redis

from .. import environment, keys
from ..client import Client
from ..errors import ConfigError, NekrsMLError
from ..orchestrator import Orchestrator, node_name
from .watchdog import die_with_parent

POLL_INTERVAL = 0.5  # s between health checks of the server
READY_FILE = "ready"
SUMMARY_FILE = "node.json"  # what this host's server held when the agent stopped
WORKER_START_TIMEOUT = 120.0


def ready_file(db_dir: Path, host: str) -> Path:
    return Path(db_dir) / host / READY_FILE


def summary_file(db_dir: Path, host: str) -> Path:
    return Path(db_dir) / host / SUMMARY_FILE


def node_counters(orchestrator: Orchestrator, namespace: str, host: str) -> dict:
    """This host's share of the run, read from its server: the solver ranks that wrote to it,
    the snapshots they announced, their last step, and the server's keys and memory."""
    server = next(s for st in Orchestrator.states(orchestrator.run_dir) if st.node == host
                  for s in st.servers)
    with Orchestrator._connect(server, orchestrator.password) as conn:
        members = sorted(int(m) for m in conn.smembers(keys.solver_members(namespace)))
        snapshots = conn.get(keys.solver_snapshots(namespace))
        step = conn.get(keys.solver_step(namespace))
        memory = conn.info("memory").get("used_memory_peak")
        stored = conn.dbsize()
    return {"solver_ranks": members, "snapshots": int(snapshots or 0),
            "last_step": int(step) if step else None, "keys": stored,
            "peak_memory_bytes": memory}


def run_node_agent(db_dir: Path, namespace: str, maxmemory: str,
                   case: Optional[Path] = None) -> int:
    host = node_name()
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    orchestrator = Orchestrator(db_dir, mode="colocated", namespace=namespace,
                                maxmemory=maxmemory, die_with_parent=True)
    workers: List[subprocess.Popen] = []
    summary_file(db_dir, host).unlink(missing_ok=True)
    try:
        try:
            # what a killed agent of an earlier run in this directory left on this host (the
            # launcher's lock keeps two runs out of one directory, so nothing here is live)
            Orchestrator.stop_dir(db_dir)
            info = orchestrator.start()
        except NekrsMLError as exc:
            print(f"nekrs-ml node {host}: error: the server did not start: {exc}",
                  file=sys.stderr, flush=True)
            return 3
        mine = [s["address"] for s in info["servers"] if s["node"] == host]
        if case is not None:
            try:
                workers = serve_case(case, db_dir, namespace, host, workers)
            except NekrsMLError as exc:
                print(f"nekrs-ml node {host}: error: {exc}", file=sys.stderr, flush=True)
                return 3
        ready_file(db_dir, host).write_text(json.dumps({"servers": mine,
                                                        "workers": len(workers)}))
        print(f"nekrs-ml node {host}: ready, server at {', '.join(mine)}"
              + (f", {len(workers)} model worker(s)" if workers else ""), flush=True)
        while not stopping:
            dead = orchestrator.dead_servers()
            if dead:
                print(f"nekrs-ml node {host}: error: redis-server {', '.join(dead)}; this node's "
                      f"server log is in {orchestrator.node_dir}", file=sys.stderr, flush=True)
                return 3
            time.sleep(POLL_INTERVAL)
        print(f"nekrs-ml node {host}: stopping ({signal.Signals(stopping[0]).name})", flush=True)
        try:
            counters = node_counters(orchestrator, namespace, host)
            summary_file(db_dir, host).write_text(json.dumps(counters))
        except (NekrsMLError, redis.RedisError, OSError, StopIteration, ValueError) as exc:
            print(f"nekrs-ml node {host}: warning: no node counters: {exc}", file=sys.stderr,
                  flush=True)
        return 0
    finally:
        ready_file(db_dir, host).unlink(missing_ok=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        orchestrator.stop()


def serve_case(case: Path, db_dir: Path, namespace: str, host: str,
               workers: List[subprocess.Popen]) -> List[subprocess.Popen]:
    """This host's part of an inferring case: its deployModel on this host's server, then its
    model workers (killed by the kernel with the agent), each serving once its heartbeat is up.
    Appends to and returns `workers`, so that the caller stops those started before a failure."""
    from ..config import load_par
    from ..serve.deploy import deploy
    from ..serve.settings import DeploySettings
    from .settings import LaunchSettings

    settings = LaunchSettings.from_case(load_par(str(case)))
    env = {**os.environ, **Orchestrator.info(db_dir)["env"], environment.NAMESPACE: namespace}
    client = Client(**environment.connection_options(env))  # this host's server
    try:
        deployment = DeploySettings.from_par(case, namespace=namespace)
        if deployment.model_file is not None:
            version = deploy(client, namespace, deployment.model_name, deployment.model_file,
                             origin=f"deployModel:{deployment.model_file_text}")
            print(f"nekrs-ml node {host}: deployed {deployment.model_file} as "
                  f"{deployment.model_name!r} v{version}", flush=True)
        elif settings.workflow == "infer":
            raise ConfigError(f"{case.name}: workflow = infer needs deployModel on several hosts")
        run_dir = Path(db_dir).parent
        for index in range(settings.model_workers):
            log = open(run_dir / f"worker{index}-{host}.log", "ab")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "nekrs_ml.cli", "serve", str(case), "--worker", str(index)],
                env=env, cwd=str(run_dir), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent()))
            log.close()
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        for index, worker in enumerate(workers):
            while not client.exists(keys.worker_heartbeat(namespace, index)):
                if worker.poll() is not None:
                    raise NekrsMLError(f"model worker {index} exited with code {worker.returncode} "
                                       f"before serving (see {run_dir}/worker{index}-{host}.log)")
                if time.monotonic() > deadline:
                    raise NekrsMLError(f"model worker {index} did not start within "
                                       f"{WORKER_START_TIMEOUT:g} s")
                time.sleep(0.1)
        return workers
    finally:
        client.close()
