"""The emulated cluster of the multinode tier: it lives in the package
(nekrs_ml/bench/emulated_nodes.py), where `nekrs-ml bench scaling` uses it too; the tests import
it from here."""

from nekrs_ml.bench.emulated_nodes import (BRIDGE_HOST, NETWORK, RSH_AGENT,  # noqa: F401
                                           EmulatedCluster, why_unavailable)
