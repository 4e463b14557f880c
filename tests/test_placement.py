"""Where `nekrs-ml run` puts the parts on the hosts of an allocation (nekrs_ml.launch.placement)."""

import pytest

from nekrs_ml.errors import ConfigError
from nekrs_ml.launch.placement import Placement, open_mpi_hosts, spread

HOSTS = ["x1001", "x1002", "x1003"]


def test_ranks_spread_evenly_with_the_first_hosts_taking_the_rest():
    assert spread(7, HOSTS) == {"x1001": 3, "x1002": 2, "x1003": 2}
    assert spread(6, HOSTS) == {"x1001": 2, "x1002": 2, "x1003": 2}
    assert spread(2, HOSTS) == {"x1001": 1, "x1002": 1}  # hosts without ranks left out
    assert open_mpi_hosts(spread(7, HOSTS)) == "x1001:3,x1002:2,x1003:2"


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
    (3, 2, 0, r"trainerRanks = 2 on trainerNodes = 3.*raise trainerRanks or lower trainerNodes"),
    (3, 3, 4, r"trainerNodes = 4, but the allocation has 3 hosts"),
])
def test_impossible_placements_name_the_key_and_the_fix(solver, trainer, nodes, message):
    with pytest.raises(ConfigError, match=message):
        Placement.colocated(HOSTS, solver, trainer, nodes, training=True)
