"""Where the parts of a run go on the hosts of an allocation (`nekrs-ml run` on several nodes).

Co-located (`deployment = colocated`): every host runs a node agent (`nekrs-ml node`) with its
server; the solver ranks are spread over all hosts (the first hosts take one more when they do
not divide evenly), the trainer ranks likewise over the first `trainerNodes` hosts (0: all).
A trainer rank reads the snapshots of its own node's server, so a node without trainer ranks
streams data nobody trains on: the placement says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from ..errors import ConfigError


def spread(ranks: int, hosts: List[str]) -> Dict[str, int]:
    """`ranks` over `hosts` in order, as evenly as they go: {host: ranks} (hosts with none
    left out)."""
    base, extra = divmod(ranks, len(hosts))
    counts = {host: base + (1 if index < extra else 0) for index, host in enumerate(hosts)}
    return {host: count for host, count in counts.items() if count}


@dataclass(frozen=True)
class Placement:
    hosts: List[str]
    solver: Dict[str, int]   # host -> solver ranks
    trainer: Dict[str, int]  # host -> trainer ranks
    servers: List[str]       # hosts with a server (and their node agent)

    @classmethod
    def colocated(cls, hosts: List[str], solver_ranks: int, trainer_ranks: int,
                  trainer_nodes: int, training: bool) -> "Placement":
        if len(hosts) < 2:
            raise ConfigError("a multi-node placement needs at least 2 hosts")
        if solver_ranks < len(hosts):
            raise ConfigError(
                f"solverRanks = {solver_ranks} on {len(hosts)} hosts: deployment = colocated puts "
                "solver ranks on every host of the allocation; use solverRanks >= the number of "
                "hosts (or a smaller allocation)")
        trainer = {}
        if training:
            if trainer_nodes > len(hosts):
                raise ConfigError(f"trainerNodes = {trainer_nodes}, but the allocation has "
                                  f"{len(hosts)} hosts; use 0 (all) to {len(hosts)}")
            trainer_hosts = hosts[:trainer_nodes or len(hosts)]
            if trainer_ranks < len(trainer_hosts):
                raise ConfigError(
                    f"trainerRanks = {trainer_ranks} on trainerNodes = {len(trainer_hosts)}: "
                    "every trainer node needs a trainer rank; raise trainerRanks or lower "
                    "trainerNodes")
            trainer = spread(trainer_ranks, trainer_hosts)
        return cls(hosts=list(hosts), solver=spread(solver_ranks, hosts), trainer=trainer,
                   servers=list(hosts))

    def untrained_hosts(self) -> List[str]:
        """Hosts whose solver ranks stream snapshots that no trainer rank reads."""
        if not self.trainer:
            return []
        return [host for host in self.solver if host not in self.trainer]

    def as_dict(self) -> Dict:
        return {"hosts": self.hosts, "servers": self.servers,
                "solver_ranks": self.solver, "trainer_ranks": self.trainer}


def open_mpi_hosts(counts: Dict[str, int]) -> str:
    """Open MPI's --host list with slots: "a:2,b:2" (ranks fill each host's slots in order)."""
    return ",".join(f"{host}:{count}" for host, count in counts.items())
