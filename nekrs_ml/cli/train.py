"""`nekrs-ml train CASE.par`: the online trainer of the wall model (nekrs_ml.train), run under
mpiexec. torch and mpi4py are imported only when the command runs."""

from __future__ import annotations

import argparse

from .commands import command


@command("train", "train the wall model online from the solver's snapshots (run under mpiexec)")
def _train(parser: argparse.ArgumentParser):
    parser.add_argument("par", help="case .par file; its [NEKRS_ML] section configures training")
    parser.add_argument("--run-dir", help="directory of the history file, the trained model and "
                        "the checkpoints (default: $NEKRS_ML_RUN_DIR, else the current directory)")
    parser.add_argument("--data-timeout", type=float, default=600.0, metavar="S",
                        help="fail when a rank has no training data and the solver has made no "
                        "progress for S seconds (default 600); a solver on its way to its sampling "
                        "window is waited for")
    parser.add_argument("--max-skips", type=int, default=20, metavar="N",
                        help="fail after N bad snapshots in a row (wrong dtype, shape, NaN...; "
                        "default 20); fewer are skipped with a warning and counted")
    parser.add_argument("--stream", action="append", metavar="NAME=NAMESPACE",
                        help="read the training stream of ensemble member NAME, written by its "
                        "solver under NAMESPACE (repeatable; default: one stream, 'solver', in "
                        "the trainer's own namespace)")
    parser.add_argument("--consumer", metavar="NAME",
                        help="this trainer's name in the streams' consumer groups (every consumer "
                        "sees every snapshot; default: the modelName) and in its control keys "
                        "NS:trainer:NAME:status|alive|stop (default: NS:trainer:...)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in checkpointDir")

    def run(args) -> int:
        from ..train.distributed import leave
        from ..train.loop import main
        leave(main(args))
    return run
