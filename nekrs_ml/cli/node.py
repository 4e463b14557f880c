"""`nekrs-ml node`: the node agent of a multi-node run (nekrs_ml.launch.node_agent)."""

from __future__ import annotations

import argparse

from .commands import command


@command("node", "node agent of a multi-node run: this host's servers and model workers "
                 "(one per host, started by `nekrs-ml run` under mpiexec)")
def _node(parser: argparse.ArgumentParser):
    parser.add_argument("--dir", required=True,
                        help="the run's database directory, shared by the hosts, with the "
                        "launcher's plan.json")

    def run(args) -> int:
        from pathlib import Path

        from ..launch.node_agent import run_node_agent

        return run_node_agent(Path(args.dir))
    return run
