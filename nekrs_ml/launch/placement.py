"""Where the parts of a run go on the hosts of an allocation (`nekrs-ml run` on several nodes).

- Co-located (`deployment = colocated`): every host runs a server (and its model workers); the
  solver ranks are spread over all hosts (the first hosts take one more when they do not divide
  evenly), the trainer ranks likewise over the first `trainerNodes` hosts (0: all). A trainer
  rank reads the snapshots of its own host's server, so a host without trainer ranks streams
  data nobody trains on: the placement says so.
- Clustered (`deployment = cluster`): the first `dbNodes` hosts hold the Redis Cluster
  (`shards` masters each) and nothing else; the solver ranks, the trainer ranks (first
  `trainerNodes` of the others) and the model workers are spread over the other hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from ..errors import ConfigError


def spread(ranks: int, hosts: List[str]) -> Dict[str, int]:
    """`ranks` over `hosts` in order, as evenly as they go: {host: ranks} (hosts with none
    left out)."""
    base, extra = divmod(ranks, len(hosts))
    counts = {host: base + (1 if index < extra else 0) for index, host in enumerate(hosts)}
    return {host: count for host, count in counts.items() if count}


def _trainer(hosts: List[str], trainer_ranks: int, trainer_nodes: int,
             every_node: bool) -> Dict[str, int]:
    """The trainer ranks over the first trainer_nodes hosts (0: all); every_node: each of them
    needs one (co-located: a trainer rank reads its own host's server only)."""
    if trainer_nodes > len(hosts):
        raise ConfigError(f"trainerNodes = {trainer_nodes}, but the allocation has {len(hosts)} "
                          f"hosts for the trainer; use 0 (all) to {len(hosts)}")
    trainer_hosts = hosts[:trainer_nodes or len(hosts)]
    if every_node and trainer_ranks < len(trainer_hosts):
        raise ConfigError(
            f"trainerRanks = {trainer_ranks} on {len(trainer_hosts)} trainer hosts (trainerNodes "
            f"= {trainer_nodes}; 0: all): deployment = colocated needs a trainer rank on each, "
            "as each reads its own host's snapshots; raise trainerRanks or lower trainerNodes")
    return spread(trainer_ranks, trainer_hosts)


@dataclass(frozen=True)
class Placement:
    mode: str                # colocated | cluster
    hosts: List[str]
    solver: Dict[str, int]   # host -> solver ranks
    trainer: Dict[str, int]  # host -> trainer ranks
    servers: List[str]       # hosts with servers
    workers: Dict[str, List[int]] = field(default_factory=dict)  # host -> model worker indices
    shards: int = 1          # cluster: masters per database host

    @classmethod
    def colocated(cls, hosts: List[str], solver_ranks: int, trainer_ranks: int,
                  trainer_nodes: int, training: bool, workers: int = 0) -> "Placement":
        if len(hosts) < 2:
            raise ConfigError("a multi-node placement needs at least 2 hosts")
        if solver_ranks < len(hosts):
            raise ConfigError(
                f"solverRanks = {solver_ranks} on {len(hosts)} hosts: deployment = colocated puts "
                "solver ranks on every host of the allocation; use solverRanks >= the number of "
                "hosts (or a smaller allocation)")
        return cls(mode="colocated", hosts=list(hosts), solver=spread(solver_ranks, hosts),
                   trainer=(_trainer(hosts, trainer_ranks, trainer_nodes, every_node=True)
                            if training else {}),
                   servers=list(hosts),
                   workers={host: list(range(workers)) for host in hosts} if workers else {})

    @classmethod
    def clustered(cls, hosts: List[str], db_nodes: int, shards: int, solver_ranks: int,
                  trainer_ranks: int, trainer_nodes: int, training: bool,
                  workers: int = 0) -> "Placement":
        if not 1 <= db_nodes < len(hosts):
            raise ConfigError(
                f"dbNodes = {db_nodes} on {len(hosts)} hosts: deployment = cluster puts the "
                "database on the first dbNodes hosts and the solver, trainer and workers on the "
                f"others; use 1 to {len(hosts) - 1}")
        if shards * db_nodes < 3:
            raise ConfigError(f"shards = {shards} on dbNodes = {db_nodes}: a Redis Cluster needs "
                              "at least 3 masters; raise shards")
        compute = hosts[db_nodes:]
        worker_hosts = spread(workers, compute) if workers else {}
        indices, first = {}, 0
        for host, count in worker_hosts.items():
            indices[host] = list(range(first, first + count))
            first += count
        return cls(mode="cluster", hosts=list(hosts), solver=spread(solver_ranks, compute),
                   trainer=(_trainer(compute, trainer_ranks, trainer_nodes, every_node=False)
                            if training else {}),
                   servers=list(hosts[:db_nodes]), workers=indices, shards=shards)

    def untrained_hosts(self) -> List[str]:
        """Co-located: hosts whose solver ranks stream snapshots that no trainer rank reads."""
        if not self.trainer or self.mode != "colocated":
            return []
        return [host for host in self.solver if host not in self.trainer]

    def plan(self, namespace: str, maxmemory: str, interface: str, case: Path,
             deploy: bool) -> Dict:
        """What each host's node agent does (nekrs_ml.launch.node_agent)."""
        return {"mode": self.mode, "namespace": namespace, "maxmemory": maxmemory,
                "interface": interface, "case": str(case),
                "hosts": {host: {"server": host in self.servers, "shards": self.shards,
                                 "workers": self.workers.get(host, []),
                                 "deploy": deploy and self.mode == "colocated"}
                          for host in self.hosts}}

    def as_dict(self) -> Dict:
        return {"mode": self.mode, "hosts": self.hosts, "servers": self.servers,
                "solver_ranks": self.solver, "trainer_ranks": self.trainer,
                "model_workers": self.workers}
