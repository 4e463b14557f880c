"""Weak scaling of send and retrieve on emulated nodes: snapshot put and get per rank.

Emulated nodes are Linux network namespaces on this machine (nekrs_ml/bench/emulated_nodes.py,
root needed), each with its own host name and address. For 1, 2, ... nodes (``--nodes``), with
the same ranks on every node (``--ranks-per-node``), every rank is a process on its node that,
per call:

- **send**: puts one training snapshot with the C++ ``TrainingStream``, the coupling's own stream
  write (inputs [points, features] and targets [points, features], one pipelined round trip);
- **retrieve**: gets the same snapshot's two tensors back (``get_tensors``, pipelined GETs);
- **baseline**: a bare SET and GET of one value of the same number of bytes, under the rank's
  hash tag (in a Redis Cluster it lives on the same master as the rank's snapshots).

The four are timed in turn in every call, so the machine's drift hits all of them alike; the
snapshot's keys are deleted after each call (not timed), so the servers reuse their memory as in
a run whose trainer consumes. Layouts (``--layouts``):

- ``colocated``: one server per node on a Unix socket (``nekrs-ml db start --mode colocated`` on
  each node); each rank talks to its own node's server only;
- ``cluster``: one Redis Cluster of ``--shards`` masters on each of the first ``--db-nodes``
  nodes (0: every node), bound to the node's address and formed over the emulated network; every
  rank routes its keys to the master of its hash tag, on whichever node that is.

All ranks start their timed calls together (after their warm-up calls), as MPI ranks of a solver
step would. The emulated nodes share this machine's cores, memory and kernel: what scales here is
the protocol (round trips, slot routing, which server a rank's keys land on, servers per core),
not a network's contention.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import NekrsMLError
from .harness import WARMUP_CALLS

NAMESPACE = "bench"
OPS = ("snapshot_put", "snapshot_get", "bare_put", "bare_get")

# The reference: Balin et al. 2023 (SmartSim/SmartRedis with Redis on Polaris), per rank and call.
POLARIS_SEED = {
    "colocated": {"snapshot_put": 1600.0, "snapshot_get": 2100.0, "ideal": 800.0,
                  "note": "co-located, flat from 24 to ~11,000 ranks: send ~1.6 ms, retrieve "
                          "~2.1 ms (ideal ~0.8 ms)"},
    "cluster": {"snapshot_put": (2000.0, 100000.0), "snapshot_get": (2000.0, 100000.0),
                "note": "clustered, 1 database node: send/retrieve ~2 ms at 24 ranks growing "
                        "to ~0.1 s at the largest scale"},
}

# A Python line run on a database node: its masters bound to the node's address, not yet a
# cluster (the benchmark forms it once every node's masters answer, as `nekrs-ml run` does).
START_MASTERS = (
    "import sys\n"
    "from nekrs_ml.orchestrator import Orchestrator\n"
    "Orchestrator(sys.argv[1], mode='cluster', shards=int(sys.argv[3]), bind=sys.argv[2],\n"
    "             maxmemory=sys.argv[4], form_cluster=False).start()\n")


class ScalingError(NekrsMLError):
    """The benchmark cannot run as asked (no emulated nodes, bad option, a rank failed)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", default="1,2,3", help="emulated node counts, e.g. 1,2,3")
    parser.add_argument("--ranks-per-node", type=int, default=2, help="ranks on every node")
    parser.add_argument("--layouts", default="colocated,cluster", help="colocated, cluster or both")
    parser.add_argument("--points", type=int, default=25000, help="wall points per rank")
    parser.add_argument("--features", type=int, default=1,
                        help="columns of the inputs and of the targets of a snapshot")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per rank")
    parser.add_argument("--shards", type=int, default=3,
                        help="cluster layout: masters on each database node")
    parser.add_argument("--db-nodes", type=int, default=1,
                        help="cluster layout: nodes holding masters, the first ones (0: all)")
    parser.add_argument("--maxmemory", default="2gb", help="memory cap of every server")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the ranks of one case may take, start to end")
    parser.add_argument("--plot", metavar="PNG",
                        help="also draw p50 against nodes into this PNG (needs matplotlib)")


def node_counts(text: str) -> List[int]:
    try:
        counts = sorted({int(word) for word in text.split(",") if word.strip()})
    except ValueError:
        raise ScalingError(f"--nodes {text!r}: give node counts separated by commas, e.g. 1,2,3")
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise ScalingError(f"--nodes {text!r}: node counts from 1 to 64")
    return counts


def check_arguments(args) -> None:
    for name in ("ranks_per_node", "points", "features", "calls"):
        if getattr(args, name) < 1:
            raise ScalingError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    unknown = set(layouts(args)) - {"colocated", "cluster"}
    if unknown or not layouts(args):
        raise ScalingError(f"--layouts {args.layouts!r}: use colocated, cluster or both")
    if args.shards < 1 or args.db_nodes < 0:
        raise ScalingError("--shards must be at least 1 and --db-nodes at least 0")


def layouts(args) -> List[str]:
    return [word.strip() for word in args.layouts.split(",") if word.strip()]


def payload(args) -> Dict[str, object]:
    itemsize = 4 if args.dtype == "float32" else 8
    return {"points": args.points, "features": args.features, "dtype": args.dtype,
            "bytes": 2 * args.points * args.features * itemsize}


def child_env() -> Dict[str, str]:
    """Environment of what runs on the nodes: the installed package, never a source tree that
    happens to be the working directory (`python -m` puts it first on sys.path)."""
    return dict(os.environ, PYTHONSAFEPATH="1")


def machine_now() -> Dict[str, object]:
    """The machine and its load at the time of a measurement (other work shares the cores)."""
    from .harness import machine

    described = machine()
    described["load_average"] = [round(value, 2) for value in os.getloadavg()]
    return described


# --- the parent: nodes, servers, ranks ----------------------------------------------------------
def run(args, log) -> List[Dict]:
    from .emulated_nodes import EmulatedCluster, why_unavailable

    check_arguments(args)
    counts = node_counts(args.nodes)
    unavailable = why_unavailable()
    if unavailable is not None:
        raise ScalingError(f"bench scaling needs emulated nodes (network namespaces): "
                           f"{unavailable}; run it as root on Linux with iproute2 and util-linux")
    log(f"payload per rank and call: {payload(args)}")
    log(f"seed (Polaris): {POLARIS_SEED['colocated']['note']}; {POLARIS_SEED['cluster']['note']}")
    records: List[Dict] = []
    with EmulatedCluster(counts[-1]) as cluster:
        for count in counts:
            for layout in layouts(args):
                log(f"{layout}: {count} node(s) x {args.ranks_per_node} rank(s)")
                records += measure(cluster, cluster.nodes[:count], layout, args, log)
    if args.plot:
        plot(records, args.plot)
        log(f"figure: {args.plot}")
    return records


def measure(cluster, nodes: Sequence[str], layout: str, args, log) -> List[Dict]:
    run_dir = Path(tempfile.mkdtemp(prefix="nkml-scaling-", dir="/tmp"))
    ranks: List[subprocess.Popen] = []
    try:
        placed = [node for node in nodes for _ in range(args.ranks_per_node)]
        # The ranks start first: their imports overlap the servers' start; each waits for its
        # spec on stdin.
        for node in placed:
            ranks.append(cluster.popen(
                node, [sys.executable, "-m", "nekrs_ml.bench.scaling", "--rank"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=child_env()))
        addresses_of = start_servers(cluster, nodes, layout, run_dir, args)
        password = (run_dir / "password").read_text().strip()
        for rank, (node, proc) in enumerate(zip(placed, ranks)):
            spec = {"rank": rank, "node": node, "addresses": addresses_of[node],
                    "cluster": layout == "cluster", "password": password, "points": args.points,
                    "features": args.features, "dtype": args.dtype, "calls": args.calls}
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
        deadline = time.monotonic() + args.timeout
        wait_for_lines(ranks, "ready", deadline)  # every rank connected and warmed up
        for proc in ranks:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(line) for line in wait_for_lines(ranks, "{", deadline)]
        for proc in ranks:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        measured_on = machine_now()
        return summarize(layout, nodes, results, args, measured_on)
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_servers(cluster, nodes, run_dir)


def start_servers(cluster, nodes: Sequence[str], layout: str, run_dir: Path,
                  args) -> Dict[str, List[str]]:
    """Starts the layout's servers on the nodes; the addresses each node's ranks are given."""
    from ..orchestrator import Orchestrator

    python = sys.executable
    if layout == "colocated":
        for node in nodes:
            done = cluster.run(node, [python, "-m", "nekrs_ml.cli", "db", "start", "--dir",
                                      str(run_dir), "--mode", "colocated", "--maxmemory",
                                      args.maxmemory], timeout=120, env=child_env())
            if done.returncode != 0:
                raise ScalingError(f"the server of {node} did not start: {done.stderr.strip()}")
        info = Orchestrator.info(run_dir)
        own = {server["node"]: server["address"] for server in info["servers"]}
        return {node: [own[node]] for node in nodes}
    db_nodes = nodes[:args.db_nodes] if args.db_nodes else nodes
    if len(db_nodes) * args.shards < 3:
        raise ScalingError(f"a Redis Cluster needs at least 3 masters: --shards {args.shards} on "
                           f"{len(db_nodes)} node(s); raise --shards")
    for node in db_nodes:
        done = cluster.run(node, [python, "-c", START_MASTERS, str(run_dir), cluster.address(node),
                                  str(args.shards), args.maxmemory], timeout=120, env=child_env())
        if done.returncode != 0:
            raise ScalingError(f"the masters of {node} did not start: {done.stderr.strip()}")
    Orchestrator.form_cluster_of(run_dir)  # over the bridge, from this (host) namespace
    seeds = Orchestrator.info(run_dir)["addresses"]
    return {node: seeds for node in nodes}


def stop_servers(cluster, nodes: Sequence[str], run_dir: Path) -> None:
    """Each node stops its own servers (their state is in the shared run directory), all nodes
    at once; whatever is left is killed with the namespaces when the cluster stops."""
    stopping = [cluster.popen(node, [sys.executable, "-m", "nekrs_ml.cli", "db", "stop", "--dir",
                                     str(run_dir)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=child_env())
                for node in nodes if (run_dir / node).is_dir()]
    for proc in stopping:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(run_dir, ignore_errors=True)


def wait_for_lines(procs: List[subprocess.Popen], starts: str, deadline: float) -> List[str]:
    """One stdout line from each process that starts with ``starts``, in the processes' order;
    a process that ends or answers anything else first fails the case, naming its stderr."""
    lines: Dict[int, str] = {}
    selector = selectors.DefaultSelector()
    for index, proc in enumerate(procs):
        selector.register(proc.stdout, selectors.EVENT_READ, index)
    try:
        while len(lines) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScalingError(f"{len(procs) - len(lines)} rank(s) gave no {starts!r} line "
                                   "within --timeout; raise --timeout on a busy machine")
            for key, _ in selector.select(timeout=left):
                index = key.data
                line = procs[index].stdout.readline()
                selector.unregister(key.fileobj)
                if not line.startswith(starts):
                    procs[index].kill()
                    error = procs[index].stderr.read()
                    raise ScalingError(f"rank {index} failed: {(line + error).strip()[-2000:]}")
                lines[index] = line
    finally:
        selector.close()
    return [lines[index] for index in range(len(procs))]


def summarize(layout: str, nodes: Sequence[str], results: List[Dict], args,
              measured_on: Dict) -> List[Dict]:
    import numpy as np

    from .harness import latency_us

    records = []
    bare_p50 = {}
    for op in OPS:
        pooled = [s for result in results for s in result["seconds"][op]]
        per_rank = [float(np.median(result["seconds"][op])) * 1e6 for result in results]
        summary = latency_us(pooled)
        record = {"layout": layout, "nodes": len(nodes), "ranks_per_node": args.ranks_per_node,
                  "ranks": len(results), "op": op, **payload(args), "calls": args.calls,
                  **summary,
                  "rank_p50_us": [round(value, 1) for value in per_rank],
                  "rank_p99_us": [round(float(np.percentile(result["seconds"][op], 99)) * 1e6, 1)
                                  for result in results],
                  "machine": measured_on}
        if layout == "cluster":
            record.update(db_nodes=args.db_nodes or len(nodes), shards_per_db_node=args.shards)
        if op.startswith("bare"):
            bare_p50[op.split("_")[1]] = summary["p50_us"]
        seed = POLARIS_SEED[layout].get(op)
        if seed is not None:
            record["seed_polaris_us"] = seed
        records.append(record)
    for record in records:  # the snapshot against the bare call of the same bytes, same run
        if record["op"].startswith("snapshot"):
            record["vs_bare_p50"] = record["p50_us"] / bare_p50[record["op"].split("_")[1]]
    return records


def print_table(records: List[Dict]) -> None:
    if records:
        first = records[0]
        print(f"payload per rank and call: {first['points']} points x {first['features']} "
              f"feature(s) x 2 tensors, {first['dtype']}: {first['bytes']} bytes; "
              f"load average {first['machine'].get('load_average')}")
    print(f"{'layout':9} {'nodes':>5} {'ranks':>5} {'op':13} {'p50 us':>9} {'p99 us':>9} "
          f"{'vs bare':>7}  seed (Polaris)")
    for r in records:
        seed = r.get("seed_polaris_us")
        if isinstance(seed, (list, tuple)):
            seed_text = f"{seed[0] / 1000:.0f} -> {seed[1] / 1000:.0f} ms"
        else:
            seed_text = f"{seed / 1000:.1f} ms" if seed else ""
        ratio = f"{r['vs_bare_p50']:.2f}" if "vs_bare_p50" in r else ""
        print(f"{r['layout']:9} {r['nodes']:>5} {r['ranks']:>5} {r['op']:13} {r['p50_us']:>9.0f} "
              f"{r['p99_us']:>9.0f} {ratio:>7}  {seed_text}")
    print(f"seed: {POLARIS_SEED['colocated']['note']}; {POLARIS_SEED['cluster']['note']}")


def plot(records: List[Dict], path: str) -> None:
    """p50 and p99 per call against the node count: one panel per layout, the snapshot's put
    and get beside the bare SET and GET, the reference system's co-located times as lines."""
    try:
        import matplotlib
    except ImportError:
        raise ScalingError(f"--plot {path}: matplotlib is not installed (pip install "
                           "matplotlib), or leave --plot out: the JSON holds every number")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [layout for layout in ("colocated", "cluster")
             if any(r["layout"] == layout for r in records)]
    figure, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 5.6), squeeze=False)
    styles = {"snapshot_put": ("C0", "o", "snapshot put (send)"),
              "snapshot_get": ("C1", "s", "snapshot get (retrieve)"),
              "bare_put": ("C0", "x", "bare SET, same bytes"),
              "bare_get": ("C1", "+", "bare GET, same bytes")}
    for axis, layout in zip(axes[0], shown):
        for op, (color, marker, label) in styles.items():
            rows = sorted((r for r in records if r["layout"] == layout and r["op"] == op),
                          key=lambda r: r["nodes"])
            if not rows:
                continue
            dashed = "--" if op.startswith("bare") else "-"
            axis.plot([r["nodes"] for r in rows], [r["p50_us"] / 1000 for r in rows],
                      dashed, color=color, marker=marker, label=f"{label}, p50")
            axis.plot([r["nodes"] for r in rows], [r["p99_us"] / 1000 for r in rows], ":",
                      color=color, marker=marker, alpha=0.4, label=f"{label}, p99")
        if layout == "colocated":
            for op, color in (("snapshot_put", "C0"), ("snapshot_get", "C1")):
                axis.axhline(POLARIS_SEED["colocated"][op] / 1000, color=color, alpha=0.3,
                             linewidth=3, label=f"Polaris (seed), {op.split('_')[1]}")
        first = next(r for r in records if r["layout"] == layout)
        title = f"{layout}: {first['ranks_per_node']} rank(s) per node"
        if layout == "cluster":
            title += f", {first['shards_per_db_node']} masters on {first['db_nodes']} node(s)"
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("emulated nodes (one machine, shared cores)")
        axis.set_ylabel("ms per call and rank")
        axis.set_yscale("log")
        axis.set_xticks(sorted({r["nodes"] for r in records}))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    first = records[0]
    figure.suptitle(f"send/retrieve per rank: {first['points']} points x {first['features']} "
                    f"feature(s) x 2 tensors, {first['dtype']} ({first['bytes']} bytes)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- one rank, on its node ------------------------------------------------------------------------
def rank_main() -> int:
    """A rank: reads its spec (one JSON line), connects, warms up, says "ready", waits for "go",
    makes its timed calls and prints one JSON line of seconds per operation."""
    import numpy as np

    from .. import _core, keys

    spec = json.loads(sys.stdin.readline())
    if socket.gethostname() != spec["node"]:  # the emulation must place the rank on its node
        raise ScalingError(f"rank {spec['rank']} runs on {socket.gethostname()}, not on "
                           f"{spec['node']}")
    rank, calls = spec["rank"], spec["calls"]
    client = _core.Client(spec["addresses"], password=spec["password"], cluster=spec["cluster"])
    shape = (spec["points"], spec["features"])
    inputs = np.random.default_rng(rank).uniform(0.6, 1.1, shape).astype(spec["dtype"])
    targets = (inputs ** 2 * 3e-3).astype(spec["dtype"])
    same_bytes = np.zeros(inputs.nbytes + targets.nbytes, dtype=np.uint8)
    # on the master of the rank's snapshots
    bare_key = f"{NAMESPACE}:{keys.rank_tag(NAMESPACE, rank)}:bare"
    # room for every snapshot: the retention check then costs no round trip (as in a run whose
    # trainer keeps up); the tensors are deleted after each call, the announcements stay
    stream = _core.TrainingStream(client, NAMESPACE, rank, 1, WARMUP_CALLS + calls + 10, "drop",
                                  60.0)
    seconds: Dict[str, List[float]] = {op: [] for op in OPS}
    clock = time.perf_counter

    def call(seq: int, timed: bool) -> None:
        began = clock()
        result = stream.put(seq + 1, 0.0, inputs, targets)
        put_done = clock()
        if not result["written"]:
            raise ScalingError(f"rank {rank}: snapshot {seq} was not written: {result['warning']}")
        snapshot = [keys.snapshot_inputs(NAMESPACE, rank, seq),
                    keys.snapshot_targets(NAMESPACE, rank, seq)]
        got = client.get_tensors(snapshot)
        get_done = clock()
        client.put_tensor(bare_key, same_bytes)
        bare_put_done = clock()
        client.get_tensor(bare_key)
        bare_get_done = clock()
        if seq == 0 and not (np.array_equal(got[0], inputs) and np.array_equal(got[1], targets)):
            raise ScalingError(f"rank {rank}: the snapshot read back differs from the one put")
        for key in snapshot:  # not timed: the server reuses this memory for the next snapshot
            client.delete(key)
        if timed:
            seconds["snapshot_put"].append(put_done - began)
            seconds["snapshot_get"].append(get_done - put_done)
            seconds["bare_put"].append(bare_put_done - get_done)
            seconds["bare_get"].append(bare_get_done - bare_put_done)

    for seq in range(WARMUP_CALLS):
        call(seq, timed=False)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    for seq in range(WARMUP_CALLS, WARMUP_CALLS + calls):
        call(seq, timed=True)
    print(json.dumps({"rank": rank, "node": spec["node"], "seconds": seconds}), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plot"] and len(sys.argv) == 4:  # a figure of records measured before
        plot(json.loads(Path(sys.argv[2]).read_text()), sys.argv[3])
        sys.exit(0)
    if sys.argv[1:] != ["--rank"]:
        sys.exit("usage: python -m nekrs_ml.bench.scaling --rank (a rank, started by `nekrs-ml "
                 "bench scaling`, its spec on stdin) | --plot RECORDS.json FIGURE.png")
    sys.exit(rank_main())
