"""`nekrs-ml reproduce CASE.par`: the stand-in solver (nekrs_ml.reproduce), run under mpiexec."""

from __future__ import annotations

import argparse
import json
import traceback

from .commands import command


@command("reproduce", "stand-in MPI solver streaming channel wall samples (run under mpiexec)")
def _reproduce(parser: argparse.ArgumentParser):
    parser.add_argument("par", help="case .par file with [NEKRS_ML] and [REPRODUCER] sections")
    parser.add_argument("--summary", help="write the run summary (JSON) to this file (rank 0)")

    def run(args) -> int:
        from mpi4py import MPI

        from ..reproduce import run_solver

        comm = MPI.COMM_WORLD
        try:
            summary = run_solver(args.par)
        except Exception:  # noqa: BLE001 - this rank alone failed: the others must not hang
            traceback.print_exc()
            if comm.Get_size() > 1:
                comm.Abort(1)  # the other ranks may wait in a collective call forever
            return 1
        if summary:
            from ..rundir import write_file

            text = json.dumps(summary)
            print(f"reproducer: {text}", flush=True)
            if args.summary:  # whole or not at all (a full disk leaves no empty file)
                write_file(args.summary, text + "\n")
        return 0
    return run
