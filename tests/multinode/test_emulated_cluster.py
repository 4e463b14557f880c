"""The emulated cluster (tests/support/emulated_cluster.py): three network namespaces as nodes, MPI ranks
placed on them through the rsh agent, and a co-located deployment started by hand on every node
(`nekrs-ml db start --mode colocated` per node, the stand-in solver under mpiexec across the
nodes): each node's ranks reach only their own node's server."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.emulated_cluster import EmulatedCluster, why_unavailable
from support.runs import write_case

UNAVAILABLE = why_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster(3) as running:
        yield running
    assert not running.pids()


def mpiexec(cluster, ranks: int, argv, cwd, env=None, timeout=120):
    command = ["mpiexec", "--hostfile", str(cluster.node_file), "-n", str(ranks), "--map-by",
               "node", *argv]
    return subprocess.run(command, cwd=cwd, env=cluster.mpi_env(env), capture_output=True,
                          text=True, timeout=timeout)


def test_ranks_run_one_per_node_under_the_nodes_names(cluster, tmp_path):
    # rank 0 prints every rank's row: lines of several ranks may interleave on mpiexec's stdout
    program = (
        "from mpi4py import MPI\n"
        "import socket\n"
        "c = MPI.COMM_WORLD\n"
        "host = socket.gethostname()\n"
        "row = (c.rank, host, socket.gethostbyname(host), c.allreduce(c.rank + 1))\n"
        "rows = c.gather(row)\n"
        "if c.rank == 0:\n"
        "    print('\\n'.join(' '.join(map(str, r)) for r in rows))\n")
    proc = mpiexec(cluster, 3, [sys.executable, "-c", program], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = sorted(line.split() for line in proc.stdout.splitlines())
    assert [row[1] for row in rows] == cluster.nodes
    assert [row[2] for row in rows] == [cluster.address(node) for node in cluster.nodes]
    assert {row[3] for row in rows} == {"6"}  # the ranks talk over the test network


PLACED = "echo \"$(hostname) ${OMPI_COMM_WORLD_RANK:-$PMI_RANK} ${NEKRS_ML_PLACEMENT_CHECK:-unset}\""


@pytest.mark.parametrize("flavor,words", [
    ("openmpi", ["mpiexec"]),
    ("mpich", ["mpiexec.mpich", "-launcher", "rsh", "-launcher-exec", "{agent}"]),
])
def test_the_launchers_host_lists_place_ranks_and_forward_the_runs_environment(
        cluster, tmp_path, flavor, words):
    """The command nekrs_ml.launch.mpi builds, run by the real launcher on the emulated nodes:
    each rank on the host the counts say, in order, with the run's variables (nodes start with a
    login's environment, as over ssh)."""
    from nekrs_ml.launch.mpi import MpiLauncher

    if not shutil.which(words[0]):
        pytest.skip(f"{words[0]} is not installed (Debian: apt-get install mpich)")
    words = [word.format(agent=cluster.rsh_agent) for word in words]
    first, second, third = cluster.nodes
    counts = {first: 2, second: 1, third: 2}
    env = cluster.mpi_env(dict(os.environ, NEKRS_ML_PLACEMENT_CHECK="forwarded"))
    argv, env = MpiLauncher(tuple(words), flavor).command(["sh", "-c", PLACED], 5, counts, env)
    proc = cluster.run(first, argv, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = sorted(tuple(line.split()) for line in proc.stdout.splitlines() if line.strip())
    assert [(host, int(rank)) for host, rank, _ in sorted(rows, key=lambda r: int(r[1]))] == [
        (first, 0), (first, 1), (second, 2), (third, 3), (third, 4)]
    assert {value for _, _, value in rows} == {"forwarded"}
    if flavor == "openmpi":  # without -x the ranks of the other nodes would not see it
        bare = [word for i, word in enumerate(argv)
                if word != "-x" and (i == 0 or argv[i - 1] != "-x")]
        proc = cluster.run(first, bare, env=env, timeout=60)
        seen = {tuple(line.split()[::2]) for line in proc.stdout.splitlines() if line.strip()}
        assert seen == {(first, "forwarded"), (second, "unset"), (third, "unset")}, proc.stdout


def test_each_node_has_its_own_loopback(cluster, tmp_path):
    """A server on one node's loopback is out of reach of the others; its address is not."""
    first, second = cluster.nodes[0], cluster.nodes[1]
    server = cluster.popen(first, ["redis-server", "--port", "17001", "--bind",
                                   f"127.0.0.1 {cluster.address(first)}", "--save", "",
                                   "--appendonly", "no", "--protected-mode", "no"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ping = ["redis-cli", "-p", "17001", "ping"]
        deadline = 50
        while cluster.run(first, ping).stdout.strip() != "PONG" and deadline:
            deadline -= 1
            subprocess.run(["sleep", "0.1"])
        assert cluster.run(first, ping).stdout.strip() == "PONG"
        assert cluster.run(second, ping).stdout.strip() != "PONG"
        remote = ["redis-cli", "-h", cluster.address(first), "-p", "17001", "ping"]
        assert cluster.run(second, remote).stdout.strip() == "PONG"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_colocated_servers_started_per_node_serve_their_nodes_ranks(cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    infos = {}
    try:
        for node in cluster.nodes:
            proc = cluster.run(node, [sys.executable, "-m", "nekrs_ml.cli", "db", "start", "--dir",
                                      str(run_dir), "--mode", "colocated"], timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            infos[node] = json.loads(proc.stdout)
        # the last start lists every node's socket, in the run directory all nodes share
        info = infos[cluster.nodes[-1]]
        assert [server["node"] for server in info["servers"]] == cluster.nodes
        assert [Path(a.split(":", 1)[1]).parent.name for a in info["addresses"]] == cluster.nodes
        env = dict(os.environ, **info["env"])
        case = write_case(str(tmp_path), {"NEKRS_ML": {"workflow": "train", "deployment": "colocated",
                                                       "maxSnapshots": 100},
                                          "REPRODUCER": {"steps": 30, "points": 50,
                                                         "stepCost": 0.0}})
        # Open MPI passes remote ranks only what -x names (a node starts with a login's env)
        forwarded = [arg for name in info["env"] for arg in ("-x", name)]
        proc = mpiexec(cluster, 3, [*forwarded, sys.executable, "-m", "nekrs_ml.cli", "reproduce",
                                    str(case)], tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # rank r ran on node r (--map-by node) and wrote to that node's server only
        from nekrs_ml import keys
        from nekrs_ml.client import Client

        ns = env.get("NEKRS_ML_NAMESPACE", "nkml")
        for rank, (node, address) in enumerate(zip(cluster.nodes, info["addresses"])):
            client = Client([address], password=_password(info))
            try:
                members = sorted(int(m) for m in client.redis.smembers(keys.solver_members(ns)))
                assert members == [rank], node
                assert client.list_length(keys.snapshot_index(ns, rank)) == 3
            finally:
                client.close()
    finally:
        for node in cluster.nodes:
            cluster.run(node, [sys.executable, "-m", "nekrs_ml.cli", "db", "stop", "--dir",
                               str(run_dir)], timeout=60)


def _password(info) -> str:
    path = info["env"].get("NEKRS_ML_PASSWORD_FILE")
    return Path(path).read_text().strip() if path else None


def start_launcher(cluster, case: Path, run_dir: Path) -> subprocess.Popen:
    """`nekrs-ml run` on the first node, as a batch script runs on the first node of its
    allocation (PBS_NODEFILE names the three nodes)."""
    return cluster.popen(cluster.nodes[0], [sys.executable, "-m", "nekrs_ml.cli", "run", str(case),
                                            "--run-dir", str(run_dir)],
                         env=cluster.mpi_env(), cwd=case.parent, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)


def run_to_report(cluster, case: Path, run_dir: Path, timeout: float = 400) -> dict:
    """`nekrs-ml run` on the first node to its end; its report.json, which must say ok."""
    launcher = start_launcher(cluster, case, run_dir)
    out, _ = launcher.communicate(timeout=timeout)
    assert launcher.returncode == 0, out
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "ok", report["message"]
    return report


def colocated_case(directory: Path, steps: int = 200) -> Path:
    return write_case(str(directory), {
        "NEKRS_ML": {"workflow": "train", "deployment": "colocated", "solverRanks": 3,
                     "trainerRanks": 2, "trainerNodes": 2, "maxSnapshots": 100,
                     "hiddenLayers": 8, "stepsPerEpoch": 5, "stopSolver": "false",
                     # never converged: the trainer ends after the solver, every snapshot read
                     "patience": 100000},
        "REPRODUCER": {"steps": steps, "points": 100, "stepCost": 0.0}})


def test_colocated_training_run_across_three_nodes(cluster, tmp_path):
    run_dir = tmp_path / "run"
    report = run_to_report(cluster, colocated_case(tmp_path), run_dir, timeout=300)
    first, second, third = cluster.nodes
    assert report["placement"]["solver_ranks"] == {first: 1, second: 1, third: 1}
    assert report["placement"]["trainer_ranks"] == {first: 1, second: 1}
    assert any(third in warning and "nobody trains on" for warning in report["warnings"])
    # every rank's snapshots (20 each) reached its node's server; the two trainer ranks, one
    # DDP group across two nodes, trained on those of the first two nodes
    assert report["snapshots"]["written"] == 3 * 20
    assert report["trainer"]["data_window"]["snapshots"] == 2 * 20
    assert report["model_version"] >= 1
    # per node, what its server held: its own solver rank and that rank's 20 snapshots
    for rank, node in enumerate(cluster.nodes):
        counters = report["nodes"][node]
        assert counters["solver_ranks"] == [rank] and counters["snapshots"] == 20, counters
        assert counters["last_step"] == 200 and counters["peak_memory_bytes"] > 0
    assert not cluster.pids()  # every server, agent and rank is gone from every node


def test_a_killed_node_agent_ends_the_run_naming_its_node(cluster, tmp_path):
    run_dir = tmp_path / "run"
    case = colocated_case(tmp_path, steps=100000)  # runs until the agent dies
    case.write_text(case.read_text().replace("stepCost = 0.0", "stepCost = 0.002"))
    launcher = start_launcher(cluster, case, run_dir)
    try:
        victim = cluster.nodes[2]
        agent = None
        for _ in range(600):  # the run is up once the solver's coupling has started
            agent = _agent_pid(cluster, victim)
            if agent and "wall points" in _solver_log(run_dir):
                break
            time.sleep(0.1)
        assert agent, "no node agent on " + victim
        os.kill(agent, signal.SIGKILL)
        out, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0, out
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "orchestrator"
    assert victim in report["message"], report["message"]
    for _ in range(100):  # every server, agent and rank on every node is gone
        if not cluster.pids():
            break
        time.sleep(0.1)
    assert not cluster.pids()


def _agent_pid(cluster, node: str):
    out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"nekrs_ml.cli" in cmdline and b"node" in cmdline:
            return int(pid)
    return None


def _solver_log(run_dir: Path) -> str:
    path = run_dir / "solver.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_colocated_inference_across_three_nodes(cluster, tmp_path):
    """workflow = infer: each node agent deploys the model on its node's server and runs its
    node's model worker, so every node's solver rank gets predictions from its own node from
    step 0 on (the trainer across nodes is the training test's)."""
    import torch

    model_file = tmp_path / "start_model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(model_file))
    run_dir = tmp_path / "run"
    case = write_case(str(tmp_path), {
        "NEKRS_ML": {"workflow": "infer", "deployment": "colocated", "solverRanks": 3,
                     "workers": 1, "inferenceInterval": 1, "deployModel": model_file.name},
        "REPRODUCER": {"steps": 300, "points": 100, "stepCost": 0.01}})
    report = run_to_report(cluster, case, run_dir)
    inference = report["inference"]
    assert inference["calls"] == inference["predicted_calls"] == 3 * 301
    assert inference["fallbacks"] == 0 and not any(inference["failures"].values())
    nodes_log = (run_dir / "nodes.log").read_text()
    for node in cluster.nodes:  # each node deployed the model and served it with its worker
        assert f"nekrs-ml node {node}: deployed" in nodes_log
        assert "serving 'wall_model' v1" in (run_dir / f"worker0-{node}.log").read_text(), node
    assert not cluster.pids()


def test_clustered_run_with_the_database_on_the_first_node(cluster, tmp_path):
    """deployment = cluster, dbNodes = 1: three masters on the first node, bound to its address
    and formed into one Redis Cluster; solver ranks, trainer and model workers on the others."""
    import torch

    model_file = tmp_path / "start_model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(model_file))
    run_dir = tmp_path / "run"
    case = write_case(str(tmp_path), {
        "NEKRS_ML": {"workflow": "train+infer", "deployment": "cluster", "dbNodes": 1,
                     "shards": 3, "solverRanks": 2, "trainerRanks": 1, "workers": 2,
                     "inferenceInterval": 1, "deployModel": model_file.name, "maxSnapshots": 100,
                     "hiddenLayers": 8, "stepsPerEpoch": 5, "stopSolver": "false",
                     # never converged: the trainer ends after the solver, every snapshot read
                     "patience": 100000},
        "REPRODUCER": {"steps": 300, "points": 100, "stepCost": 0.01}})
    report = run_to_report(cluster, case, run_dir)
    first, second, third = cluster.nodes
    placement = report["placement"]
    assert placement["servers"] == [first]
    assert placement["solver_ranks"] == {second: 1, third: 1}
    assert placement["trainer_ranks"] == {second: 1}
    assert placement["model_workers"] == {second: [0], third: [1]}
    # the three masters listen on the first node's address of the test network
    address = cluster.address(first)
    nodes_log = (run_dir / "nodes.log").read_text()
    assert nodes_log.count(f"{address}:") == 3, nodes_log
    inference = report["inference"]
    assert inference["calls"] == inference["predicted_calls"] == 2 * 301
    assert inference["fallbacks"] == 0
    assert report["trainer"]["data_window"]["snapshots"] == 2 * 30  # all ranks, one database
    assert not cluster.pids()


def ensemble_case(directory: Path, placement: str, members: str) -> Path:
    """Two training members, a held-out one and two models, train+infer; `placement`: the
    deployment's keys, `members`: the [MEMBER] sections."""
    case = directory / "ensemble.par"
    case.write_text(f"""
[NEKRS_ML]
workflow = train+infer
{placement}
inferenceInterval = 1
sampleInterval = 10
maxSnapshots = 20
whenFull = drop
modelName = a
hiddenLayers = 16
batchSize = 256
stepsPerEpoch = 10
publishInterval = 1
minSnapshots = 5
stopSolver = false
# never converged: the trainers end after the members, every snapshot read
patience = 100000

[REPRODUCER]
steps = 1200
points = 200
stepCost = 0.01

[ENSEMBLE]
members = wide, narrow
heldOut = spare
models = a, b
{members}
[MODEL b]
hiddenLayers = 8,8
""")
    return case


CLUSTERED = """deployment = cluster
dbNodes = 1
shards = 3
solverRanks = 1
trainerRanks = 1
workers = 2"""

CLUSTERED_MEMBERS = """
[MEMBER wide]
nekrs_ml.solverRanks = 2
reproducer.reTau = 550

[MEMBER narrow]
reproducer.reTau = 950

[MEMBER spare]
reproducer.reTau = 1400
"""


def test_an_ensemble_on_a_clustered_database(cluster, tmp_path):
    """deployment = cluster on three nodes: the database on the first, each member's ranks
    spread over the other two starting one node further on than the member before, both models'
    trainers reading both training members through the cluster, every member (the held-out one
    too) getting model a back from the workers of the other nodes."""
    case = ensemble_case(tmp_path, CLUSTERED, CLUSTERED_MEMBERS)
    run_dir = tmp_path / "run"
    report = run_to_report(cluster, case, run_dir, timeout=400)
    first, second, third = cluster.nodes
    placement = report["placement"]
    assert placement["servers"] == [first]
    assert placement["members"] == {"wide": {second: 1, third: 1}, "narrow": {third: 1},
                                    "spare": {second: 1}}
    assert placement["solver_ranks"] == {second: 2, third: 2}
    assert placement["model_workers"] == {second: [0], third: [1]}
    members, models = report["ensemble"]["members"], report["ensemble"]["models"]
    for name, block in members.items():
        assert block["status"] == "finished", (name, block)
        assert block["inference"]["predicted_calls"] > 0, (name, block["inference"])
        assert block["hosts"] == placement["members"][name]
    for name, block in models.items():
        assert block["version"] and set(block["members"]) == {"wide", "narrow"}, (name, block)
        for member in ("wide", "narrow"):  # both ranks of `wide`, on two nodes, were read
            assert block["members"][member]["snapshots"] > 0, (name, block["members"])
    assert members["spare"]["tau_w_rel_error"]["a"]["samples"] > 0
    assert not cluster.pids()


COLOCATED = """deployment = colocated
solverRanks = 3
trainerRanks = 3
workers = 1"""

COLOCATED_MEMBERS = """
[MEMBER wide]
reproducer.reTau = 550

[MEMBER narrow]
nekrs_ml.solverRanks = 1
reproducer.reTau = 950

[MEMBER spare]
nekrs_ml.solverRanks = 1
reproducer.reTau = 1400

[MODEL a]
features = wall_units
"""


def test_an_ensemble_on_colocated_servers(cluster, tmp_path):
    """deployment = colocated on three nodes: every member's rank 0 on the first node (whose
    server the launcher reads), a three-rank member on all three; each node's trainer ranks
    of both models read their own node's ranks of every member, the wall-units model scaling
    them by the case record that node's server holds; every member gets model a back from its
    own node's worker."""
    case = ensemble_case(tmp_path, COLOCATED, COLOCATED_MEMBERS)
    run_dir = tmp_path / "run"
    report = run_to_report(cluster, case, run_dir, timeout=400)
    first, second, third = cluster.nodes
    placement = report["placement"]
    assert placement["servers"] == [first, second, third]
    assert placement["members"] == {"wide": {first: 1, second: 1, third: 1},
                                    "narrow": {first: 1}, "spare": {first: 1}}
    assert placement["trainer_ranks"] == {first: 1, second: 1, third: 1}
    members, models = report["ensemble"]["members"], report["ensemble"]["models"]
    for name, block in members.items():
        assert block["status"] == "finished", (name, block)
        assert block["inference"]["predicted_calls"] > 0, (name, block["inference"])
    written = members["wide"]["snapshots"]["written"]
    for name, block in models.items():
        assert block["version"], (name, block)
        # every rank's snapshots of `wide`, on three nodes, reached that model's trainer
        assert block["members"]["wide"]["snapshots"] + block["dropped"] >= written, block
        assert block["members"]["wide"]["snapshots"] > written // 2, (name, block["members"])
    assert models["a"]["features"] == "wall_units"
    # what each node's server held, per member: its own ranks of that member and their snapshots
    nodes = report["nodes"]
    assert nodes[first]["members"]["narrow"]["solver_ranks"] == [0]
    assert nodes[first]["members"]["spare"]["solver_ranks"] == [0]
    for rank, node in enumerate(cluster.nodes):
        block = nodes[node]["members"]["wide"]
        assert block["solver_ranks"] == [rank] and block["snapshots"] > 0, (node, block)
    assert nodes[second]["members"]["narrow"]["solver_ranks"] == []
    assert not cluster.pids()
