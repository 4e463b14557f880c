"""A real Slurm 22.05 on the emulated cluster (tests/support/emulated_cluster.py): one slurmctld, one
slurmd per emulated node, munge for authentication, all with their own files in a temp dir.

- munged runs in the host namespace with its own key and socket (`AuthInfo=socket=...`); every
  daemon and client reaches it through the file system the nodes share.
- slurmctld runs in the host namespace under its own host name (`<prefix>ctl`, in a UTS
  namespace of its own) and listens on the bridge's address (.254), which every node reaches.
- slurmd runs inside each node's namespace under the node's host name (`slurmd -N NODE`), with
  `NodeAddr` the node's address: a job's processes are children of its node's slurmd, so they
  run in that node's namespace, with its network and host name.
- No cgroups: `ProctrackType=proctrack/linuxproc` (a step's processes are found by parentage),
  `TaskPlugin=task/affinity` (srun --cpu-bind sets each task's affinity with sched_setaffinity),
  no accounting. `SlurmdParameters=config_overrides`: each node says `CPUs=` what the test
  needs, whatever the machine has (the nodes share its cores).
- The MPI plug-in for Debian's MPIs: `--mpi=pmix` (Slurm's mpi_pmix_v4 over libpmix2) for Open
  MPI 4.1 (`--mpi=pmi2`: "OMPI was not built with SLURM's PMI support"), `--mpi=pmi2` for MPICH
  4.0 (under pmix each rank is a job of its own); `MpiDefault=none`, so each srun says which.
- Every node shares /tmp: `TmpFS=DIR/tmp/%n` gives each node its own directory for the PMIx
  plug-in's files (with one /tmp the second node's step fails: "File exists").
- KillWait=30 (Slurm's default): between a job's SIGTERM and SIGKILL (scancel, time limit).

stop() cancels every job, stops the daemons, then the emulated cluster kills whatever is left on
the nodes and removes them; it runs also after a failed start. `why_unavailable()` says why a
Slurm cluster cannot be made here (namespaces, packages).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from .emulated_cluster import BRIDGE_HOST, NETWORK, EmulatedCluster
from .emulated_cluster import why_unavailable as why_no_namespaces

PROGRAMS = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo", "munged")
PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/slurm-wlm"

SLURM_CONF = """\
ClusterName=nkml
SlurmctldHost={ctl}({ctl_address})
SlurmctldPort={ctl_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
TmpFS={dir}/tmp/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
KillWait={kill_wait}
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout={slurmd_timeout}
InactiveLimit=0
MessageTimeout=10
TCPTimeout=5
HealthCheckInterval=0
PropagateResourceLimits=NONE
PluginDir={plugin_dir}
NodeName={node_range} NodeAddr={address_range} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=emu Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""

# slurmd 22.05 loads a cgroup plug-in whatever the other plug-ins are (a cgroup-less slurmd came
# with 23.02's CgroupPlugin=disabled); naming v1 skips the detection, which fails in a node's
# namespace: `ip netns exec` mounts a fresh /sys, without /sys/fs/cgroup. Nothing uses it.
CGROUP_CONF = "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n"

# Slurm's PMIx plug-in waits PMIxTimeout (default 300 s) for a collective's other nodes: after a
# node is lost, the slurmstepd of an MPI step on a surviving node waits that long before it ends.
MPI_CONF = "PMIxTimeout=15\n"


def why_unavailable() -> Optional[str]:
    """None where a Slurm cluster can be made here, else the reason (for pytest.skip)."""
    reason = why_no_namespaces()
    if reason:
        return reason
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if missing:
        return (f"the emulated Slurm cluster needs {', '.join(missing)} (Debian: apt-get install "
                "slurm-wlm munge, or bash install.sh --test)")
    if not Path(PLUGIN_DIR, "proctrack_linuxproc.so").exists():
        return f"Slurm's plug-ins are not in {PLUGIN_DIR}"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    """Slurm on an EmulatedCluster of `nodes` nodes, one partition `emu` of all of them."""

    def __init__(self, nodes: int = 3, cpus: int = 4, kill_wait: int = 30,
                 slurmd_timeout: int = 6):
        self.emu = EmulatedCluster(nodes)
        self.cpus = cpus
        self.kill_wait = kill_wait
        self.slurmd_timeout = slurmd_timeout
        self.dir = self.emu.dir / "slurm"
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge.sock"
        self.ctl = f"{self.emu.prefix}ctl"
        self._daemons: Dict[str, subprocess.Popen] = {}

    @property
    def nodes(self) -> List[str]:
        return self.emu.nodes

    @property
    def ctl_address(self) -> str:
        return f"{NETWORK}.{self.emu.net}.{BRIDGE_HOST}"

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment for Slurm's commands (SLURM_CONF names this cluster's configuration)."""
        env = dict(os.environ if base is None else base)
        for name in [name for name in env if name.startswith(("SLURM_", "PBS_", "OMPI_MCA_"))]:
            del env[name]
        env["SLURM_CONF"] = str(self.conf)
        return env

    # --- lifetime -----------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "SlurmCluster":
        try:
            self.emu.start()
            for sub in ("state", "spool", "munge"):
                (self.dir / sub).mkdir(parents=True)
            for node in self.nodes:
                (self.dir / "spool" / node).mkdir()
                (self.dir / "tmp" / node).mkdir(parents=True)
            self._start_munge()
            stem = f"{self.emu.prefix}n"  # nodes <prefix>n1 ... <prefix>nN
            self.conf.write_text(SLURM_CONF.format(
                ctl=self.ctl, ctl_address=self.ctl_address, ctl_port=_free_port(),
                node_port=_free_port(), munge_socket=self.munge_socket, dir=self.dir,
                kill_wait=self.kill_wait, slurmd_timeout=self.slurmd_timeout,
                plugin_dir=PLUGIN_DIR, cpus=self.cpus,
                node_range=f"{stem}[1-{len(self.nodes)}]",
                address_range=f"{NETWORK}.{self.emu.net}.[1-{len(self.nodes)}]"))
            (self.dir / "cgroup.conf").write_text(CGROUP_CONF)
            (self.dir / "mpi.conf").write_text(MPI_CONF)
            self._daemons["slurmctld"] = subprocess.Popen(
                ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.ctl,
                 "slurmctld", "-D", "-i", "-f", str(self.conf)],
                env=self.env(), stdout=subprocess.DEVNULL,
                stderr=open(self.dir / "slurmctld.err", "w"))
            for node in self.nodes:
                self.start_slurmd(node)
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._daemons["munged"] = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
             f"--key-file={key}", f"--pid-file={self.dir / 'munge' / 'munged.pid'}",
             f"--log-file={self.dir / 'munge' / 'munged.log'}",
             f"--seed-file={self.dir / 'munge' / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "munge" / "munged.err", "w"))
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if self._daemons["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("munged did not start: "
                                   + (self.dir / "munge" / "munged.err").read_text())
            time.sleep(0.05)

    def start_slurmd(self, node: str) -> subprocess.Popen:
        proc = self.emu.popen(node, ["slurmd", "-D", "-N", node, "-f", str(self.conf)],
                              env=self.env(), stdout=subprocess.DEVNULL,
                              stderr=open(self.dir / f"slurmd-{node}.err", "w"))
        self._daemons[f"slurmd-{node}"] = proc
        return proc

    def kill_node(self, node: str) -> None:
        """As when a node dies: SIGKILL to its slurmd and to everything else on it."""
        for pid in [int(p) for p in subprocess.run(["ip", "netns", "pids", node],
                                                   capture_output=True, text=True).stdout.split()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc = self._daemons.pop(f"slurmd-{node}", None)
        if proc is not None:
            proc.wait(timeout=10)

    def revive_node(self, node: str, timeout: float = 60) -> None:
        """A new slurmd on `node`; the node is back once idle (ReturnToService=2)."""
        self.start_slurmd(node)
        self.command(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for name, proc in self._daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self.logs(name)}")
            out = self.command(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = out.stdout.strip()
            rows = dict(line.split() for line in states.splitlines() if len(line.split()) == 2)
            if sorted(rows) == sorted(self.nodes) and set(rows.values()) == {"idle"}:
                return
            time.sleep(0.3)
        raise RuntimeError(f"Slurm's nodes are not idle after {timeout} s: {states}\n"
                           + self.logs("slurmctld"))

    def logs(self, name: str) -> str:
        text = ""
        for path in (self.dir / f"{name}.err", self.dir / f"{name}.log"):
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        """Cancels every job, stops the daemons, removes the nodes: nothing is left."""
        if self._daemons.get("slurmctld") and self._daemons["slurmctld"].poll() is None:
            self.command(["scancel", "--full", "--partition=emu"], check=False, timeout=10)
        names = list(self._daemons)
        for name in names:  # all at once: their state is thrown away, no need to wait long
            if self._daemons[name].poll() is None:
                self._daemons[name].send_signal(signal.SIGTERM)
        for name in names:
            proc = self._daemons[name]
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._daemons = {}
        self.emu.stop()  # kills what is left on the nodes (slurmstepd, job processes)

    def pids(self) -> List[int]:
        return self.emu.pids()

    def job_pids(self, stepd: bool = True) -> Dict[str, List[str]]:
        """{node: command lines} of what runs on each node besides its slurmd (and its
        slurmstepd processes, stepd False)."""
        found: Dict[str, List[str]] = {}
        for node in self.nodes:
            out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True)
            for pid in out.stdout.split():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                text = cmdline.decode(errors="replace").strip()
                if text and not text.startswith("slurmd ") and (
                        stepd or not text.startswith("slurmstepd")):
                    found.setdefault(node, []).append(f"{pid} {text}")
        return found

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- commands -----------------------------------------------------------------------------
    def command(self, argv, node: Optional[str] = None, check: bool = True, timeout: float = 60,
                env: Optional[Dict[str, str]] = None, cwd=None) -> subprocess.CompletedProcess:
        """A Slurm command (sbatch, srun, scontrol...) in the host namespace, or on `node`."""
        argv = list(argv)
        if node is not None:
            argv = self.emu.on_node(node, argv)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env(env), cwd=cwd)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}"
                               f"{proc.stderr}")
        return proc

    def job_state(self, job: str) -> str:
        out = self.command(["scontrol", "show", "job", job], check=False)
        for word in out.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "GONE"

    def wait_job(self, job: str, timeout: float = 300, stepd: bool = True) -> str:
        """Waits until the job has ended and its processes are gone from every node (a
        cancelled job says CANCELLED at once, while its processes still stop); its last state
        (COMPLETED, FAILED, CANCELLED, TIMEOUT...)."""
        deadline = time.monotonic() + timeout
        state = last = self.job_state(job)
        while time.monotonic() < deadline and (
                state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")
                or self.job_pids(stepd)):
            time.sleep(0.5)
            state = self.job_state(job)
            last = last if state == "GONE" else state  # MinJobAge: the record goes soon
        return last
