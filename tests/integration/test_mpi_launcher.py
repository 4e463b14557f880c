"""The site's MPI launcher (nekrs_ml.launch.mpi): its kind, and the command that places ranks on
hosts for each kind. The commands of Open MPI and MPICH's Hydra also run for real on the emulated
cluster (tests/multinode/test_emulated_cluster.py); PALS and srun are not installed here, so their command
lines are checked against their documented forms."""

import os
import shutil

import sys

import pytest

from nekrs_ml.errors import ConfigError
from nekrs_ml.launch.mpi import MpiLauncher, flavor_of, forwarded_names

UNEQUAL = {"x1001": 2, "x1002": 2, "x1003": 1}
EQUAL = {"x1001": 2, "x1002": 2}
PROGRAM = ["python", "-m", "nekrs_ml.cli", "train", "case.par"]


def launcher(flavor, *words):
    return MpiLauncher(tuple(words or ["mpiexec"]), flavor)


def test_open_mpi_gets_slots_per_host_and_forwards_the_runs_variables(monkeypatch):
    monkeypatch.delenv("NEKRS_ML_TIMEOUT", raising=False)
    env = dict(os.environ, NEKRS_ML_TIMEOUT="30", NEKRS_ML_ADDRESSES="unix:/run/a.sock")
    argv, out_env = launcher("openmpi").command(PROGRAM, 5, UNEQUAL, env)
    assert argv[:5] == ["mpiexec", "-n", "5", "--host", "x1001:2,x1002:2,x1003:1"]
    assert argv[-len(PROGRAM):] == PROGRAM
    forwarded = {argv[i + 1] for i, word in enumerate(argv) if word == "-x"}
    assert {"NEKRS_ML_TIMEOUT", "NEKRS_ML_ADDRESSES", "PATH"} <= forwarded
    assert out_env == env


def test_hydra_gets_host_slots_and_forwards_everything_itself():
    argv, _ = launcher("mpich", "mpiexec.hydra").command(PROGRAM, 5, UNEQUAL)
    assert argv == ["mpiexec.hydra", "-n", "5", "-hosts", "x1001:2,x1002:2,x1003:1", *PROGRAM]


def test_pals_gets_ranks_per_node_and_one_segment_per_count():
    argv, _ = launcher("pals").command(PROGRAM, 4, EQUAL)
    assert argv == ["mpiexec", "-n", "4", "--ppn", "2", "--hosts", "x1001,x1002", *PROGRAM]
    argv, _ = launcher("pals").command(PROGRAM, 5, UNEQUAL)
    assert argv == ["mpiexec", "-n", "4", "--ppn", "2", "--hosts", "x1001,x1002", *PROGRAM, ":",
                    "-n", "1", "--ppn", "1", "--hosts", "x1003", *PROGRAM]


def test_srun_shares_the_nodes_and_lists_a_host_per_rank_when_counts_differ(tmp_path):
    srun = launcher("srun", "srun")
    argv, _ = srun.command(PROGRAM, 4, EQUAL)
    # srun under srun_step: the SIGTERM that stops a part reaches the tasks as SIGINT, not SIGKILL
    assert argv == [sys.executable, "-m", "nekrs_ml.launch.srun_step", "srun", "--overlap",
                    "--kill-on-bad-exit=1", "--export=ALL", "--disable-status", "-N", "2", "-n",
                    "4", "--nodelist=x1001,x1002", "--ntasks-per-node", "2", *PROGRAM]
    hostfile = tmp_path / "trainer.hosts"
    argv, env = srun.command(PROGRAM, 5, UNEQUAL, hostfile=hostfile)
    assert "--distribution=arbitrary" in argv and env["SLURM_HOSTFILE"] == str(hostfile)
    assert hostfile.read_text().split() == ["x1001", "x1001", "x1002", "x1002", "x1003"]


def test_one_host_lets_the_launcher_place_the_ranks():
    for flavor in ("openmpi", "mpich", "pals", None):
        argv, _ = launcher(flavor).command(PROGRAM, 3)
        assert argv == ["mpiexec", "-n", "3", *PROGRAM]


def test_an_unknown_launcher_cannot_place_ranks_on_hosts_and_says_how_to_tell_it():
    with pytest.raises(ConfigError, match="set NEKRS_ML_MPI_FLAVOR to one of openmpi, mpich"):
        launcher(None, "my-launcher").command(PROGRAM, 5, UNEQUAL)
    with pytest.raises(ValueError, match="4 ranks but 5 placed"):
        launcher("mpich").command(PROGRAM, 4, UNEQUAL)


def test_the_kind_comes_from_the_setting_the_name_or_the_version(monkeypatch, tmp_path):
    monkeypatch.setenv("NEKRS_ML_MPI_FLAVOR", "PALS")
    assert flavor_of(["mpiexec"]) == "pals"
    monkeypatch.setenv("NEKRS_ML_MPI_FLAVOR", "cray")
    with pytest.raises(ConfigError, match="NEKRS_ML_MPI_FLAVOR = 'cray': use one of"):
        flavor_of(["mpiexec"])
    monkeypatch.delenv("NEKRS_ML_MPI_FLAVOR")
    assert flavor_of(["/opt/slurm/bin/srun"]) == "srun"
    silent = tmp_path / "silent-launcher"
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    assert flavor_of([str(silent)]) is None
    if shutil.which("mpiexec.openmpi"):
        assert flavor_of(["mpiexec.openmpi"]) == "openmpi"
    if shutil.which("mpiexec.mpich"):
        assert flavor_of(["mpiexec.mpich"]) == "mpich"


def test_open_mpi_as_root_is_refused_before_anything_starts(monkeypatch):
    if os.geteuid() != 0 or not shutil.which("mpiexec.openmpi"):
        pytest.skip("needs root and Open MPI")
    monkeypatch.setenv("NEKRS_ML_MPIEXEC", "mpiexec.openmpi")
    monkeypatch.delenv("NEKRS_ML_MPI_FLAVOR", raising=False)
    monkeypatch.delenv("OMPI_ALLOW_RUN_AS_ROOT", raising=False)
    with pytest.raises(ConfigError, match="OMPI_ALLOW_RUN_AS_ROOT=1"):
        MpiLauncher.from_environment()
    monkeypatch.setenv("NEKRS_ML_MPIEXEC", "no-such-mpiexec --verbose")
    with pytest.raises(ConfigError, match="no-such-mpiexec not found"):
        MpiLauncher.from_environment()


def test_forwarded_variables_are_the_runs_and_those_the_launcher_changed(monkeypatch):
    monkeypatch.setenv("SOME_SITE_SETTING", "1")
    env = dict(os.environ, NEKRS_ML_NAMESPACE="nk", CHANGED_HERE="x", SOME_SITE_SETTING="1")
    names = forwarded_names(env)
    assert "NEKRS_ML_NAMESPACE" in names and "CHANGED_HERE" in names
    assert "SOME_SITE_SETTING" not in names
    assert "PATH" in names


def test_srun_binds_the_node_agents_and_the_solver_ranks_to_cpus_of_their_own():
    from nekrs_ml.launch.mpi import job_cpus_per_node

    assert job_cpus_per_node("4(x3)") == 4 and job_cpus_per_node("8(x2),6") == 6
    assert job_cpus_per_node("") is None and job_cpus_per_node("x") is None
    srun = launcher("srun", "srun")
    solver = {"x1001": 2, "x1002": 1}
    env = {"SLURM_JOB_CPUS_PER_NODE": "4(x2)"}
    assert srun.cpu_bind("nodes", solver, env) == "map_cpu:3"
    assert srun.cpu_bind("solver", solver, env) == "map_cpu:0,1"
    assert srun.cpu_bind("trainer", solver, env) is None
    # no CPU to spare, a binding of the site's own, or another launcher: Slurm's default
    assert srun.cpu_bind("nodes", solver, {"SLURM_JOB_CPUS_PER_NODE": "2(x2)"}) is None
    assert launcher("srun", "srun", "--cpu-bind=cores").cpu_bind("nodes", solver, env) is None
    assert launcher("openmpi").cpu_bind("nodes", solver, env) is None
    argv, _ = srun.command(PROGRAM, 2, {"x1001": 1, "x1002": 1}, cpu_bind="map_cpu:0")
    assert argv[-len(PROGRAM) - 3:-len(PROGRAM)] == ["--cpu-bind=map_cpu:0", "--ntasks-per-node",
                                                     "1"]
