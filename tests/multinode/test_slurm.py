"""Slurm tier (multinode): a real Slurm 22.05 on the emulated cluster (tests/support/slurm_cluster.py),
one slurmctld, a slurmd per emulated node, munge. The batch script of docs/deployment.md is
submitted unchanged with sbatch; `nekrs-ml run` places its node agents, trainer, solver and
model workers with srun steps (--overlap) on the job's nodes. Faults: scancel, a node lost,
the time limit. Per-step CPU binding (--cpu-bind) read back from /proc."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.slurm_cluster import SlurmCluster, why_unavailable
from support.runs import write_case

UNAVAILABLE = why_unavailable()
pytestmark = [pytest.mark.multinode,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def batch_script() -> str:
    """The Slurm batch script of docs/deployment.md, as written there."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)
    scripts = [block for block in blocks if "#SBATCH" in block]
    assert len(scripts) == 1, "docs/deployment.md should hold one Slurm batch script"
    return scripts[0]


@pytest.fixture(scope="module")
def slurm():
    with SlurmCluster(3, cpus=len(os.sched_getaffinity(0))) as running:
        yield running
    assert not running.pids()


def test_a_failed_start_leaves_no_daemon_node_or_file(monkeypatch):
    """A slurmctld that refuses its configuration: start() says why and stops what it had
    started (munged, the slurmds), removes the nodes and the files."""
    from support import slurm_cluster

    monkeypatch.setattr(slurm_cluster, "SLURM_CONF", slurm_cluster.SLURM_CONF + "NoSuchKey=1\n")
    cluster = SlurmCluster(3)
    with pytest.raises(RuntimeError, match="slurmctld exited"):
        cluster.start(timeout=20)
    left = subprocess.run(["pgrep", "-f", str(cluster.emu.dir)], capture_output=True, text=True)
    assert not left.stdout.strip(), left.stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert cluster.emu.prefix not in namespaces
    assert not cluster.emu.dir.exists()


def job_env() -> dict:
    """The submitting shell's environment: the installed nekrs-ml first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def submit(slurm, directory: Path, case: Path, *options: str) -> str:
    script = directory / "nekrs-ml.sbatch"
    script.write_text(batch_script())
    proc = slurm.command(["sbatch", "--parsable", f"--chdir={directory}",
                          f"--output={directory}/slurm-%j.out",
                          f"--export=ALL,CASE={case.name},SOLVER=reproducer", *options,
                          str(script)], env=job_env())
    return proc.stdout.strip().split(";")[0]


def job_output(directory: Path, job: str) -> str:
    path = directory / f"slurm-{job}.out"
    return path.read_text(errors="replace") if path.exists() else "(no output)"


def report_of(directory: Path, case: Path) -> dict:
    return json.loads((directory / "runs" / case.stem / "report.json").read_text())


def assert_nothing_left(slurm, timeout: float = 30, stepd: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while slurm.job_pids(stepd) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not slurm.job_pids(stepd), slurm.job_pids(stepd)


def model(directory: Path) -> str:
    import torch

    path = directory / "start_model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    return path.name


def colocated_case(directory: Path, steps: int = 150, step_cost: float = 0.01) -> Path:
    return write_case(str(directory), {
        "NEKRS_ML": {"workflow": "train+infer", "deployment": "colocated", "solverRanks": 3,
                     "trainerRanks": 3, "trainerNodes": 0, "workers": 1,
                     "inferenceInterval": 1, "deployModel": model(directory),
                     "maxSnapshots": 100, "hiddenLayers": 8, "stepsPerEpoch": 5,
                     "stopSolver": "false", "patience": 100000},
        "REPRODUCER": {"steps": steps, "points": 100, "stepCost": step_cost}})


def test_slurm_runs_steps_on_the_emulated_nodes_with_pmix(slurm, tmp_path):
    """srun places one task per node under the node's name; Open MPI's ranks (mpi4py) wire up
    through Slurm's PMIx plug-in and talk over the test network."""
    program = ("from mpi4py import MPI; import socket; c = MPI.COMM_WORLD; "
               "print(c.rank, socket.gethostname(), c.allreduce(c.rank + 1), flush=True)")
    proc = slurm.command(["srun", "--mpi=pmix", "-N3", "-n3", sys.executable, "-c", program],
                         node=slurm.nodes[0], timeout=90)
    rows = sorted(line.split() for line in proc.stdout.splitlines() if line.strip())
    assert [row[1] for row in rows] == slurm.nodes
    assert {row[2] for row in rows} == {"6"}


# MPICH through its C ABI (Debian's libmpich12; no compiler or mpi4py for MPICH needed)
MPICH_HELLO = """
import ctypes, socket
mpi = ctypes.CDLL("libmpich.so.12")
assert mpi.MPI_Init(None, None) == 0
world, rank, size, one, total = ctypes.c_int(0x44000000), ctypes.c_int(), ctypes.c_int(), \\
    ctypes.c_int(1), ctypes.c_int()
mpi.MPI_Comm_rank(world, ctypes.byref(rank))
mpi.MPI_Comm_size(world, ctypes.byref(size))
mpi.MPI_Allreduce(ctypes.byref(one), ctypes.byref(total), 1, ctypes.c_int(0x4c000405),
                  ctypes.c_int(0x58000003), world)  # MPI_INT, MPI_SUM
print(rank.value, socket.gethostname(), size.value, total.value, flush=True)
mpi.MPI_Finalize()
"""


def test_mpich_ranks_wire_up_through_pmi2(slurm, tmp_path):
    """Debian's MPICH under srun: --mpi=pmi2 makes one job of 3 ranks; under --mpi=pmix each
    rank would be a job of its own (size 1)."""
    import ctypes.util

    if not ctypes.util.find_library("mpich"):
        pytest.skip("MPICH is not installed (Debian: apt-get install mpich)")
    proc = slurm.command(["srun", "--mpi=pmi2", "-N3", "-n3", sys.executable, "-c",
                          MPICH_HELLO], node=slurm.nodes[0], timeout=90)
    rows = sorted(line.split() for line in proc.stdout.splitlines() if line.strip())
    assert [row[1] for row in rows] == slurm.nodes
    assert {(row[2], row[3]) for row in rows} == {("3", "3")}


def test_colocated_train_infer_batch_job(slurm, tmp_path):
    case = colocated_case(tmp_path)
    job = submit(slurm, tmp_path, case)
    state = slurm.wait_job(job, timeout=300)
    out = job_output(tmp_path, job)
    assert state == "COMPLETED", out
    report = report_of(tmp_path, case)
    assert report["status"] == "ok", report["message"]
    first, second, third = slurm.nodes
    placement = report["placement"]
    assert placement["hosts"] == slurm.nodes
    assert placement["solver_ranks"] == {first: 1, second: 1, third: 1}
    assert placement["trainer_ranks"] == {first: 1, second: 1, third: 1}
    inference = report["inference"]
    assert inference["calls"] == inference["predicted_calls"] == 3 * 151
    for rank, node in enumerate(slurm.nodes):
        assert report["nodes"][node]["solver_ranks"] == [rank]
    assert_nothing_left(slurm)


def test_clustered_train_infer_batch_job_with_the_database_on_the_first_node(slurm, tmp_path):
    """deployment = cluster, dbNodes = 1: the masters on the job's first node, bound to its
    address; solver ranks, trainer and model workers on the two others, all as srun steps."""
    case = write_case(str(tmp_path), {
        "NEKRS_ML": {"workflow": "train+infer", "deployment": "cluster", "dbNodes": 1,
                     "shards": 3, "solverRanks": 2, "trainerRanks": 1, "workers": 2,
                     "inferenceInterval": 1, "deployModel": model(tmp_path),
                     "maxSnapshots": 100, "hiddenLayers": 8, "stepsPerEpoch": 5,
                     "stopSolver": "false", "patience": 100000},
        "REPRODUCER": {"steps": 150, "points": 100, "stepCost": 0.01}})
    job = submit(slurm, tmp_path, case)
    state = slurm.wait_job(job, timeout=300)
    assert state == "COMPLETED", job_output(tmp_path, job)
    report = report_of(tmp_path, case)
    assert report["status"] == "ok", report["message"]
    first, second, third = slurm.nodes
    placement = report["placement"]
    assert placement["servers"] == [first]
    assert placement["solver_ranks"] == {second: 1, third: 1}
    assert placement["trainer_ranks"] == {second: 1}
    assert placement["model_workers"] == {second: [0], third: [1]}
    nodes_log = (tmp_path / "runs" / case.stem / "nodes.log").read_text()
    assert nodes_log.count(f"{slurm.emu.address(first)}:") == 3, nodes_log
    inference = report["inference"]
    assert inference["calls"] == inference["predicted_calls"] == 2 * 151
    assert_nothing_left(slurm)


def running_job(slurm, tmp_path, *options):
    """A co-located job that runs until stopped; returns (job, case) once the solver couples."""
    case = colocated_case(tmp_path, steps=100000, step_cost=0.005)
    job = submit(slurm, tmp_path, case, *options)
    solver_log = tmp_path / "runs" / case.stem / "solver.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if solver_log.exists() and "wall points" in solver_log.read_text(errors="replace"):
            return job, case
        assert slurm.job_state(job) in ("PENDING", "CONFIGURING", "RUNNING"), \
            job_output(tmp_path, job)
        time.sleep(0.2)
    raise AssertionError("the solver did not start: " + job_output(tmp_path, job))


def affinity(node_pids, word: bytes):
    """{CPUs allowed} of the processes on a node whose command line holds `word`."""
    found = []
    for pid in node_pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if any(word in part for part in cmdline[:4]):
            allowed = re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)
            found.append(allowed)
    return found


def test_scancel_mid_run_writes_the_report_and_leaves_nothing_on_any_node(slurm, tmp_path):
    """Also the per-step binding (--cpu-bind, task/affinity): on every node the co-located
    redis-server and the model worker run on the node's last CPU, the solver rank on CPU 0."""
    job, case = running_job(slurm, tmp_path)
    cpus = slurm.cpus
    for node in slurm.nodes:
        pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True,
                              text=True).stdout.split()
        servers, solvers = affinity(pids, b"redis-server"), affinity(pids, b"reproduce")
        workers = affinity(pids, b"serve")
        assert servers and solvers and workers, (node, servers, solvers, workers)
        if cpus >= 2:  # one solver rank per node: room for the server on a CPU of its own
            # Slurm's CPU ids 0 and C-1 (the machine's where its CPUs are numbered 0..C-1)
            assert len(set(servers)) == 1 and set(workers) == set(servers), (node, servers)
            assert len(set(solvers)) == 1 and set(solvers) != set(servers), (node, solvers)
            if sorted(os.sched_getaffinity(0)) == list(range(cpus)):
                assert set(servers) == {str(cpus - 1)} and set(solvers) == {"0"}, node
    cancelled = time.monotonic()
    slurm.command(["scancel", job])
    state = slurm.wait_job(job, timeout=120)
    assert state == "CANCELLED", state
    report = report_of(tmp_path, case)
    assert report["status"] in ("interrupted", "launcher"), report
    # written within KillWait of the SIGTERM, before Slurm's SIGKILL
    written = (tmp_path / "runs" / case.stem / "report.json").stat().st_mtime
    took = written - (time.time() - (time.monotonic() - cancelled))
    print(f"report written {took:.1f} s after scancel (KillWait {slurm.kill_wait} s)")
    assert took < slurm.kill_wait
    assert_nothing_left(slurm)


def test_a_job_past_its_time_limit_writes_the_report_within_kill_wait(slurm, tmp_path):
    """Slurm ends a job past its limit with SIGTERM, then SIGKILL KillWait seconds later (the
    limit is checked every 30 s); the launcher writes its report in between."""
    job, case = running_job(slurm, tmp_path)
    slurm.command(["scontrol", "update", f"JobId={job}", "TimeLimit=0:01"])
    state = slurm.wait_job(job, timeout=120)
    assert state == "TIMEOUT", state
    report = report_of(tmp_path, case)
    assert report["status"] in ("interrupted", "launcher"), report
    out = job_output(tmp_path, job)
    assert "DUE TO TIME LIMIT" in out, out
    assert_nothing_left(slurm)


def test_a_lost_node_ends_the_run_naming_the_node(slurm, tmp_path):
    """The last node's slurmd and everything on it killed mid-run, as when a node dies. Slurm
    marks the node down after SlurmdTimeout; the job (--no-kill) keeps its other nodes, srun
    ends the node agents' step ("Node failure on NODE") and the run ends with status
    orchestrator, naming the node. Every process of the run is gone from the other nodes; the
    slurmstepd of an MPI step may stay behind a while on them (Slurm's PMIx plug-in waiting
    for the lost node), which is Slurm's and ends with its daemon."""
    job, case = running_job(slurm, tmp_path)
    victim = slurm.nodes[-1]
    lost = time.monotonic()
    slurm.kill_node(victim)
    state = slurm.wait_job(job, timeout=180, stepd=False)
    print(f"run ended {time.monotonic() - lost:.1f} s after the node was lost "
          f"(SlurmdTimeout {slurm.slurmd_timeout} s)")
    report = report_of(tmp_path, case)
    assert report["status"] in ("orchestrator", "solver"), report
    assert victim in report["message"], report["message"]
    assert state in ("FAILED", "COMPLETED", "NODE_FAIL"), state
    assert_nothing_left(slurm, stepd=False)
    slurm.revive_node(victim)
