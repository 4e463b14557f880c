"""`nekrs-ml node`: the node agent of a multi-node run (nekrs_ml.launch.node_agent)."""

from __future__ import annotations

import argparse

from .commands import command
from .options import add_namespace_option


@command("node", "node agent of a multi-node run: starts and watches this host's server "
                 "(one per host, started by `nekrs-ml run` under mpiexec)")
def _node(parser: argparse.ArgumentParser):
    parser.add_argument("--dir", required=True,
                        help="the run's database directory, shared by the hosts")
    parser.add_argument("--maxmemory", default="1gb",
                        help="memory cap of this host's server (Redis units: 512mb, 4gb)")
    parser.add_argument("--case", help="an inferring case .par: deploy its deployModel on this "
                        "host's server and run its model workers here")
    add_namespace_option(parser)

    def run(args) -> int:
        from pathlib import Path

        from .. import environment
        from ..launch.node_agent import run_node_agent

        return run_node_agent(Path(args.dir), environment.resolve_namespace(args.namespace),
                              args.maxmemory, Path(args.case).absolute() if args.case else None)
    return run
