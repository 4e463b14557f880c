"""The site's MPI launcher: which kind it is, and its command line for ranks placed on hosts.

Each kind has its own way to say "these ranks on these hosts" and to pass the environment:

| kind | ranks per host | environment |
|---|---|---|
| `openmpi` (Open MPI `mpiexec`) | `--host a:2,b:1` | `-x NAME` for each variable the parts need |
| `mpich` (MPICH's Hydra, Intel MPI) | `-hosts a:2,b:1` | forwarded by default |
| `pals` (Cray PALS `mpiexec`: Polaris, Aurora) | `--ppn P --hosts a,b`; unequal counts: one segment per count, `A : B` | forwarded by default |
| `srun` (Slurm) | `--nodelist=a,b --ntasks-per-node=P`; unequal counts: `--distribution=arbitrary` with a `SLURM_HOSTFILE` | `--export=ALL` |

srun runs under `nekrs_ml.launch.srun_step`, which turns the SIGTERM that stops a part into the
SIGINT srun passes on to its tasks (srun answers SIGTERM with SIGKILL to every task).

The launcher's words come from `NEKRS_ML_MPIEXEC` (default `mpiexec`); its kind from
`NEKRS_ML_MPI_FLAVOR`, else from its name (`srun`) or what `--version` prints.
"""
import functools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError

FLAVORS = ("openmpi", "mpich", "pals", "srun")

# Variables the ranks on other hosts need besides those the launcher sets: Open MPI passes none
# of the launching shell's environment to a remote host unless told (-x).
FORWARDED = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "NEKRS_HOME", "OMP_NUM_THREADS",
             "SSDB", "SR_DB_TYPE")
FORWARDED_PREFIXES = ("NEKRS_ML_",)


@functools.lru_cache(maxsize=8)
def _version_text(program: str) -> str:
    try:
        proc = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout + proc.stderr


def flavor_of(words: Sequence[str]) -> Optional[str]:
    """The kind of the launcher `words` (None: cannot tell)."""
    chosen = os.environ.get("NEKRS_ML_MPI_FLAVOR", "").strip().lower()
    if chosen:
        if chosen not in FLAVORS:
            raise ConfigError(f"NEKRS_ML_MPI_FLAVOR = {chosen!r}: use one of {', '.join(FLAVORS)}")
        return chosen
    if Path(words[0]).name == "srun":
        return "srun"
    text = _version_text(words[0])
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "Intel(R) MPI" in text:
        return "mpich"
    if "PALS" in text:
        return "pals"
    return None


@dataclass(frozen=True)
class MpiLauncher:
    words: Tuple[str, ...]
    flavor: Optional[str]

    @classmethod
    def from_environment(cls) -> "MpiLauncher":
        """NEKRS_ML_MPIEXEC (default `mpiexec`), checked to exist and, for Open MPI as root, to be
        allowed to start ranks."""
        words = tuple(shlex.split(os.environ.get("NEKRS_ML_MPIEXEC", "mpiexec")))
        if not words:
            raise ConfigError("NEKRS_ML_MPIEXEC is empty: unset it, or name your MPI launcher")
        if not shutil.which(words[0]):
            raise ConfigError(f"{words[0]} not found: install an MPI (Debian: apt-get install "
                              "openmpi-bin) or set NEKRS_ML_MPIEXEC to your MPI launcher")
        launcher = cls(words, flavor_of(words))
        launcher.check_root_allowed()
        return launcher

    def check_root_allowed(self) -> None:
        """Open MPI refuses to start ranks as root; say so before anything starts."""
        if (self.flavor != "openmpi" or os.geteuid() != 0
                or (os.environ.get("OMPI_ALLOW_RUN_AS_ROOT")
                    and os.environ.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"))):
            return
        raise ConfigError("Open MPI's mpiexec refuses to run as root: run as a normal user, or set "
                          "OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")

    def cpu_bind(self, part: str, solver_counts: Optional[Mapping[str, int]],
                 env: Optional[Mapping[str, str]] = None) -> Optional[str]:
        """srun's --cpu-bind for a co-located run's `part` ("nodes": the node agents with their
        servers and model workers; "solver"), so that a host's server does not share a CPU with
        its solver ranks: the agents on each node's last CPU, solver rank i of a node on its CPU
        i. Only where every node of the job has more CPUs than solver ranks
        (SLURM_JOB_CPUS_PER_NODE) and NEKRS_ML_MPIEXEC names no --cpu-bind of its own; None
        (Slurm's default binding) otherwise, and for the other parts and launchers."""
        env = os.environ if env is None else env
        if (self.flavor != "srun" or not solver_counts or part not in ("nodes", "solver")
                or any(word.startswith("--cpu-bind") for word in self.words)):
            return None
        cpus = job_cpus_per_node(env.get("SLURM_JOB_CPUS_PER_NODE", ""))
        per_node = max(solver_counts.values())
        if cpus is None or cpus <= per_node:
            return None
        if part == "nodes":
            return f"map_cpu:{cpus - 1}"
        return "map_cpu:" + ",".join(str(cpu) for cpu in range(per_node))

    def command(self, program: Sequence[str], ranks: int,
                counts: Optional[Mapping[str, int]] = None,
                env: Optional[Mapping[str, str]] = None,
                hostfile: Optional[Path] = None,
                cpu_bind: Optional[str] = None) -> Tuple[List[str], Dict[str, str]]:
        """(argv, environment) that start `ranks` copies of `program`: anywhere the launcher
        likes (counts None), or counts[host] of them on each host, in order (rank 0 on the
        first host). `hostfile`: where srun's per-rank host list goes when the counts differ.
        `cpu_bind`: srun's --cpu-bind for this step (see cpu_bind; other launchers: unused)."""
        env = dict(os.environ if env is None else env)
        program = list(program)
        words = list(self.words)
        if counts is not None and sum(counts.values()) != ranks:
            raise ValueError(f"{ranks} ranks but {sum(counts.values())} placed: {dict(counts)}")
        if self.flavor == "srun":  # through srun_step: a SIGTERM to srun kills its tasks
            words = [sys.executable, "-m", "nekrs_ml.launch.srun_step", *words, "--overlap",
                     "--kill-on-bad-exit=1", "--export=ALL", "--disable-status"]
        if not counts:
            return words + ["-n", str(ranks)] + program, env
        hosts = list(counts)
        per_host = set(counts.values())
        if self.flavor == "openmpi":
            forwarded = [arg for name in forwarded_names(env) for arg in ("-x", name)]
            slots = ",".join(f"{host}:{count}" for host, count in counts.items())
            return words + ["-n", str(ranks), "--host", slots] + forwarded + program, env
        if self.flavor == "mpich":
            slots = ",".join(f"{host}:{count}" for host, count in counts.items())
            return words + ["-n", str(ranks), "-hosts", slots] + program, env
        if self.flavor == "pals":
            argv = list(words)
            for count, group in _runs_of_equal_counts(counts):
                if len(argv) > len(words):
                    argv.append(":")
                argv += ["-n", str(count * len(group)), "--ppn", str(count),
                         "--hosts", ",".join(group)] + program
            return argv, env
        if self.flavor == "srun":
            argv = words + ["-N", str(len(hosts)), "-n", str(ranks),
                            "--nodelist=" + ",".join(hosts)]
            if cpu_bind:
                argv.append("--cpu-bind=" + cpu_bind)
            if len(per_host) == 1:
                return argv + ["--ntasks-per-node", str(per_host.pop())] + program, env
            if hostfile is None:
                raise ValueError("srun with unequal ranks per host needs a hostfile path")
            hostfile.write_text("".join(f"{host}\n" for host, count in counts.items()
                                        for _ in range(count)))
            env["SLURM_HOSTFILE"] = str(hostfile)
            return argv + ["--distribution=arbitrary"] + program, env
        raise ConfigError(
            f"cannot tell which MPI {self.words[0]} is (its --version names none of Open MPI, "
            "MPICH/Hydra, Intel MPI, PALS), so ranks cannot be placed on hosts: set "
            f"NEKRS_ML_MPI_FLAVOR to one of {', '.join(FLAVORS)}")


def job_cpus_per_node(text: str) -> Optional[int]:
    """The fewest CPUs of a node of the job, from SLURM_JOB_CPUS_PER_NODE ("4(x3)", "4(x2),2",
    "8"); None when unset or unreadable."""
    counts = []
    for item in text.split(","):
        number = item.split("(", 1)[0].strip()
        if not number.isdigit():
            return None
        counts.append(int(number))
    return min(counts) if counts else None


def forwarded_names(env: Mapping[str, str]) -> List[str]:
    """The variables of `env` that ranks on another host need: those the launcher set or changed
    (not in, or different from, this process's environment), the run's own (NEKRS_ML_*) and the
    paths to programs and libraries."""
    return sorted(name for name, value in env.items()
                  if name in FORWARDED or name.startswith(FORWARDED_PREFIXES)
                  or os.environ.get(name) != value)


def _runs_of_equal_counts(counts: Mapping[str, int]) -> List[Tuple[int, List[str]]]:
    """[(ranks per host, consecutive hosts with that many)], in host order (keeps rank order)."""
    runs: List[Tuple[int, List[str]]] = []
    for host, count in counts.items():
        if runs and runs[-1][0] == count:
            runs[-1][1].append(host)
        else:
            runs.append((count, [host]))
    return runs
