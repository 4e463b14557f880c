"""`nekrs-ml node`: the node agent of a multi-node run, one per host, started by the launcher
with one rank per host under the site's own launcher (mpiexec), so no ssh is assumed.

The launcher writes the run's plan (`<db dir>/plan.json`: per host its server, model workers and
whether it deploys the model); each agent does its host's part of it in the run's database
directory (shared by the hosts):
- a co-located server (`deployment = colocated`), or this host's masters of the Redis Cluster
  (`cluster`, on the first `dbNodes` hosts), bound to this host's address on the allocation's
  network (`dbInterface`); the launcher forms the cluster once every database host is up and
  writes `cluster.ready`;
- for a case that infers: the case's `deployModel` on this host's co-located server, and its
  model workers;
then it writes `<host>/ready`, which is how the launcher sees the host ready, and watches its
server:
- on SIGTERM / SIGINT (the launcher stopping the run) it writes this host's counters
  (`<host>/node.json`), stops the server and the workers and exits 0;
- when the server dies or is stopped (SIGSTOP) it exits 3 naming this host: mpiexec then stops
  the other agents and the launcher ends the run with that message;
- when the agent itself is killed, the kernel stops its server and workers (PR_SET_PDEATHSIG),
  so nothing outlives it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import redis

from .. import environment, keys, rundir
from ..client import Client
from ..errors import ConfigError, NekrsMLError
from ..orchestrator import Orchestrator, node_name
from ..waiting import wait_until
from .serving import deploy_case_model, start_worker, wait_until_serving
from .supervisor import Part

POLL_INTERVAL = 0.5  # s between health checks of the server
PLAN_FILE = "plan.json"
READY_FILE = "ready"
CLUSTER_READY_FILE = "cluster.ready"
SUMMARY_FILE = "node.json"  # what this host's server held when the agent stopped
WAIT_TIMEOUT = 120.0  # s for the cluster to form, and for a model worker to serve
SIOCGIFADDR = 0x8915  # linux/sockios.h


def ready_file(db_dir: Path, host: str) -> Path:
    return Path(db_dir) / host / READY_FILE


def summary_file(db_dir: Path, host: str) -> Path:
    return Path(db_dir) / host / SUMMARY_FILE


def plan_file(db_dir: Path) -> Path:
    return Path(db_dir) / PLAN_FILE


def cluster_ready_file(db_dir: Path) -> Path:
    return Path(db_dir) / CLUSTER_READY_FILE


def host_address(interface: str) -> str:
    """The IPv4 address this host's servers bind to: `interface` as an address, the address of
    the network interface of that name (e.g. hsn0), or ("hostname") that of the host's name.
    Loopback is refused: the other hosts could not reach it."""
    host = socket.gethostname()
    try:
        address = None if interface == "hostname" else str(ipaddress.ip_address(interface))
    except ValueError:
        address = None
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR,
                                 struct.pack("256s", interface.encode()[:15]))
            address = socket.inet_ntoa(packed[20:24])
        except OSError as exc:
            raise ConfigError(f"dbInterface = {interface}: no IPv4 address on {host} "
                              f"({exc.strerror}); name an interface of this host (ip -4 addr)"
                              ) from None
        finally:
            probe.close()
    if address is None:
        try:
            address = socket.gethostbyname(host)
        except OSError as exc:
            raise ConfigError(f"the host name {host} does not resolve ({exc}); set dbInterface "
                              "to the interface (or address) of the allocation's network") from None
    if ipaddress.ip_address(address).is_loopback:
        raise ConfigError(f"{host} resolves to {address}, a loopback address the other hosts "
                          "cannot reach; set dbInterface to the interface (or address) of the "
                          "allocation's network (e.g. hsn0)")
    return address


def node_counters(orchestrator: Orchestrator, namespace: str, host: str,
                  members: Optional[Dict[str, str]] = None) -> Dict:
    """This host's share of the run, read from its servers: the solver ranks that wrote to
    them, the snapshots they announced and their last step (co-located; an ensemble's per
    member, `members` naming each one's namespace), the keys stored and the peak memory."""
    servers = [s for st in Orchestrator.states(orchestrator.run_dir) if st.node == host
               for s in st.servers]
    counters: Dict = {"servers": len(servers), "keys": 0, "peak_memory_bytes": 0}
    for server in servers:
        with Orchestrator._connect(server, orchestrator.password) as conn:
            counters["keys"] += conn.dbsize()
            counters["peak_memory_bytes"] += conn.info("memory").get("used_memory_peak", 0)
            if orchestrator.mode != "colocated":
                continue
            if not members:
                counters.update(_solver_counters(conn, namespace))
                continue
            counters["members"] = {name: _solver_counters(conn, ns)
                                   for name, ns in members.items()}
            counters["snapshots"] = sum(block["snapshots"]
                                        for block in counters["members"].values())
    return counters


def _solver_counters(conn, namespace: str) -> Dict:
    """The solver ranks that write to this node's server, their announced snapshots and the
    last step (one server: the ranks' keys need no routing)."""
    ranks = sorted(int(rank) for rank in conn.smembers(keys.solver_members(namespace)))
    step = conn.get(keys.solver_step(namespace))
    announced = conn.mget([keys.snapshot_announced(namespace, rank) for rank in ranks]) \
        if ranks else []
    return {"solver_ranks": ranks,
            "snapshots": sum(int(count or 0) for count in announced),
            "last_step": int(step) if step else None}


def run_node_agent(db_dir: Path) -> int:
    host = node_name()
    stopping: List[int] = []

    def on_signal(signum, frame):
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def fail(text: str) -> int:
        print(f"nekrs-ml node {host}: error: {text}", file=sys.stderr, flush=True)
        return 3

    try:
        plan = json.loads(plan_file(db_dir).read_text())
        role = plan["hosts"][host]
    except (OSError, ValueError, KeyError) as exc:
        return fail(f"no part for this host in the run's plan {plan_file(db_dir)} ({exc!r})")
    namespace = plan["namespace"]
    members = plan.get("members") or None  # an ensemble's: member -> namespace
    rundir.private_dir(Path(db_dir) / host)  # also on a host without a server: its ready file
    orchestrator: Optional[Orchestrator] = None
    workers: List[Part] = []
    summary_file(db_dir, host).unlink(missing_ok=True)
    try:
        if role["server"]:
            try:
                cluster = plan["mode"] == "cluster"
                orchestrator = Orchestrator(
                    db_dir, mode=plan["mode"], shards=role["shards"] if cluster else 3,
                    bind=host_address(plan["interface"]) if cluster else "127.0.0.1",
                    maxmemory=plan["maxmemory"], namespace=namespace, die_with_parent=True,
                    form_cluster=False)
                # what a killed agent of an earlier run in this directory left on this host
                # (the launcher's lock keeps two runs out of one directory: nothing is live)
                Orchestrator.stop_dir(db_dir)
                orchestrator.start()
            except NekrsMLError as exc:
                return fail(f"the server did not start: {exc}")
        if role["workers"] or role["deploy"]:
            try:
                if plan["mode"] == "cluster":
                    wait_for_cluster(db_dir, stopping)
                if not stopping:
                    serve_case(Path(plan["case"]), db_dir, namespace, host, role, workers)
            except NekrsMLError as exc:
                return fail(str(exc))
        mine = [s.address for st in Orchestrator.states(db_dir) if st.node == host
                for s in st.servers]
        ready_file(db_dir, host).write_text(json.dumps({"servers": mine,
                                                        "workers": role["workers"]}))
        print(f"nekrs-ml node {host}: ready" + (f", servers {', '.join(mine)}" if mine else "")
              + (f", model workers {role['workers']}" if role["workers"] else ""), flush=True)
        # Under srun a stop signal reaches every process of the step at once, this host's
        # servers included: the counters are also read as the run goes, the last reading
        # standing in for the one at the stop when the servers are already gone.
        last_counters: Optional[Dict] = None
        while not stopping:
            dead = orchestrator.dead_servers() if orchestrator else []
            if dead and not stopping:
                return fail(f"redis-server {', '.join(dead)}; this host's server logs are in "
                            f"{orchestrator.node_dir}")
            if orchestrator is not None:
                try:
                    last_counters = node_counters(orchestrator, namespace, host, members)
                except (NekrsMLError, redis.RedisError, OSError, ValueError):
                    pass
            time.sleep(POLL_INTERVAL)
        print(f"nekrs-ml node {host}: stopping ({signal.Signals(stopping[0]).name})", flush=True)
        if orchestrator is not None:
            try:
                counters = node_counters(orchestrator, namespace, host, members)
            except (NekrsMLError, redis.RedisError, OSError, ValueError) as exc:
                counters = last_counters
                if counters is None:
                    print(f"nekrs-ml node {host}: warning: no node counters: {exc}",
                          file=sys.stderr, flush=True)
            if counters is not None:
                summary_file(db_dir, host).write_text(json.dumps(counters))
        return 0
    finally:
        ready_file(db_dir, host).unlink(missing_ok=True)
        for worker in workers:  # all at once: each stop() below then waits for one only
            worker.terminate()
        for worker in workers:
            worker.stop()
        if orchestrator is not None:
            orchestrator.stop()


def wait_for_cluster(db_dir: Path, stopping: List[int]) -> None:
    """Returns once the launcher has formed the cluster, or the agent is asked to stop."""
    wait_until(lambda: cluster_ready_file(db_dir).exists() or bool(stopping), WAIT_TIMEOUT,
               "the cluster", see=f"{cluster_ready_file(db_dir)} missing")


def serve_case(case: Path, db_dir: Path, namespace: str, host: str, role: Dict,
               workers: List[Part]) -> None:
    """This host's part of an inferring case: the case's deployModel on this host's co-located
    server (role["deploy"]), then this host's model workers (role["workers"], their indices;
    killed by the kernel with the agent), each serving once its heartbeat is up. Appends to
    `workers` as they start, so that the caller stops those started before a failure."""
    env = {**os.environ, **Orchestrator.info(db_dir)["env"], environment.NAMESPACE: namespace}
    client = Client(**environment.connection_options(env))  # this host's server, or the cluster
    try:
        if role["deploy"]:
            deploy_case_model(client, case, namespace, f"nekrs-ml node {host}")
        run_dir = Path(db_dir).parent
        for index in role["workers"]:
            workers.append(start_worker(case, index, env, run_dir,
                                        run_dir / f"worker{index}-{host}.log"))
        wait_until_serving(client, namespace, dict(zip(role["workers"], workers)),
                           WAIT_TIMEOUT)
    finally:
        client.close()
