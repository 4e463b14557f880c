"""Where `nekrs-ml run` puts the parts on the hosts of an allocation (nekrs_ml.launch.placement)."""

from pathlib import Path

import pytest

from nekrs_ml.errors import ConfigError
from nekrs_ml.launch.placement import Placement, spread

HOSTS = ["x1001", "x1002", "x1003"]


def test_ranks_spread_evenly_with_the_first_hosts_taking_the_rest():
    assert spread(7, HOSTS) == {"x1001": 3, "x1002": 2, "x1003": 2}
    assert spread(6, HOSTS) == {"x1001": 2, "x1002": 2, "x1003": 2}
    assert spread(2, HOSTS) == {"x1001": 1, "x1002": 1}  # hosts without ranks left out


def test_colocated_puts_solver_ranks_everywhere_and_trainer_ranks_on_the_first_nodes():
    placement = Placement.colocated(HOSTS, solver_ranks=12, trainer_ranks=4, trainer_nodes=2,
                                    training=True)
    assert placement.servers == HOSTS
    assert placement.solver == {"x1001": 4, "x1002": 4, "x1003": 4}
    assert placement.trainer == {"x1001": 2, "x1002": 2}
    assert placement.untrained_hosts() == ["x1003"]
    every = Placement.colocated(HOSTS, 3, 3, 0, training=True)
    assert every.trainer == {host: 1 for host in HOSTS} and every.untrained_hosts() == []
    assert Placement.colocated(HOSTS, 3, 1, 0, training=False).trainer == {}


@pytest.mark.parametrize("solver,trainer,nodes,message", [
    (2, 3, 0, r"solverRanks = 2 on 3 hosts.*solverRanks >= the number of hosts"),
    (3, 2, 0, r"trainerRanks = 2 on 3 trainer hosts \(trainerNodes = 0; 0: all\).*raise "
              r"trainerRanks or lower trainerNodes"),
    (3, 3, 4, r"trainerNodes = 4, but the allocation has 3 hosts"),
])
def test_impossible_placements_name_the_key_and_the_fix(solver, trainer, nodes, message):
    with pytest.raises(ConfigError, match=message):
        Placement.colocated(HOSTS, solver, trainer, nodes, training=True)


def test_clustered_puts_the_database_first_and_everything_else_on_the_other_hosts():
    hosts = HOSTS + ["x1004"]
    placement = Placement.clustered(hosts, db_nodes=1, shards=3, solver_ranks=5, trainer_ranks=2,
                                    trainer_nodes=0, training=True, workers=4)
    assert placement.servers == ["x1001"] and placement.shards == 3
    assert placement.solver == {"x1002": 2, "x1003": 2, "x1004": 1}
    assert placement.trainer == {"x1002": 1, "x1003": 1}  # the cluster serves every host
    assert placement.workers == {"x1002": [0, 1], "x1003": [2], "x1004": [3]}
    assert placement.untrained_hosts() == []
    plan = placement.plan("ns", "1gb", "hsn0", Path("/case.par"), deploy=True)
    assert plan["hosts"]["x1001"] == {"server": True, "shards": 3, "workers": [], "deploy": False}
    assert plan["hosts"]["x1003"]["workers"] == [2] and not plan["hosts"]["x1003"]["server"]


@pytest.mark.parametrize("db_nodes,shards,message", [
    (3, 3, r"dbNodes = 3 on 3 hosts.*use 1 to 2"),
    (0, 3, r"dbNodes = 0 on 3 hosts"),
    (1, 2, r"shards = 2 on dbNodes = 1: a Redis Cluster needs at least 3 masters"),
])
def test_impossible_clusters_are_refused(db_nodes, shards, message):
    with pytest.raises(ConfigError, match=message):
        Placement.clustered(HOSTS, db_nodes, shards, 2, 1, 0, training=True)


def test_the_ranks_of_several_members_spread_over_a_clusters_masters():
    """A rank's hash tag carries its namespace (docs/protocol.md): eight one-rank ensemble
    members put their rank 0 on every master of a three-master cluster, not all on one, and
    each member's keys of one rank stay on one slot."""
    from nekrs_ml import _core, keys

    namespaces = [f"nkml.m{index}" for index in range(8)]
    slots = [_core.key_slot(keys.snapshot_index(ns, 0)) for ns in namespaces]
    masters = {slot * 3 // 16384 for slot in slots}  # redis-cli's even split of the slots
    assert masters == {0, 1, 2}, slots
    for ns in namespaces:
        assert len({_core.key_slot(key) for key in (
            keys.snapshot_inputs(ns, 0, 5), keys.snapshot_index(ns, 0),
            keys.stream_cursors(ns, 0), keys.inference_reply(ns, 0, "wall_model"),
            keys.holdout_targets(ns, 0))}) == 1, ns
