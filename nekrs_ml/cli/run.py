"""`nekrs-ml run CASE.par --solver reproducer|nekrs`: the whole workflow (nekrs_ml.launch)."""

from __future__ import annotations

import argparse

from .commands import command


@command("run", "run a case: orchestrator + trainer + solver, with progress and a report")
def _run(parser: argparse.ArgumentParser):
    parser.add_argument("par", help="case .par file with a [NEKRS_ML] section")
    parser.add_argument("--solver", choices=("reproducer", "nekrs"), default="reproducer")
    parser.add_argument("--run-dir", help="run directory (default: runs/<case name>)")
    parser.add_argument("--trainer-grace", type=float, default=120.0,
                        help="seconds the trainer may keep going after the solver finished")

    def run(args) -> int:
        from ..launch import execute

        return execute(args.par, args.solver, args.run_dir, args.trainer_grace)
    return run
