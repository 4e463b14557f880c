"""`nekrs-ml node`: the node agent of a multi-node run, one per host, started by the launcher
with one rank per host under the site's own launcher (mpiexec), so no ssh is assumed.

The agent starts this host's co-located server in the run's database directory (shared by the
hosts), which is how the launcher sees it ready: the server's state file appears there. It then
watches the server and
- stops it and exits 0 on SIGTERM / SIGINT (the launcher stopping the run);
- exits 3 naming this host when the server dies or is stopped (SIGSTOP): mpiexec then stops
  the other agents and the launcher ends the run with that message;
- takes the server with it when the agent itself is killed: the kernel sends the server
  SIGTERM when its parent dies (PR_SET_PDEATHSIG), so no server outlives its agent.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from ..errors import NekrsMLError
from ..orchestrator import Orchestrator, node_name

POLL_INTERVAL = 0.5  # s between health checks of the server


def run_node_agent(db_dir: Path, namespace: str, maxmemory: str) -> int:
    host = node_name()
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    orchestrator = Orchestrator(db_dir, mode="colocated", namespace=namespace,
                                maxmemory=maxmemory, die_with_parent=True)
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
        print(f"nekrs-ml node {host}: ready, server at {', '.join(mine)}", flush=True)
        while not stopping:
            dead = orchestrator.dead_servers()
            if dead:
                print(f"nekrs-ml node {host}: error: redis-server {', '.join(dead)}; this node's "
                      f"server log is in {orchestrator.node_dir}", file=sys.stderr, flush=True)
                return 3
            time.sleep(POLL_INTERVAL)
        print(f"nekrs-ml node {host}: stopping ({signal.Signals(stopping[0]).name})", flush=True)
        return 0
    finally:
        orchestrator.stop()
