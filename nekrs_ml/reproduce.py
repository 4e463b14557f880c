"""`nekrs-ml reproduce CASE.par`: the stand-in solver (run under mpiexec).

Each rank owns the wall points of a synthetic turbulent channel (``_core.SyntheticChannelField``:
both walls, NekRS's mirrored wall frames, inputs ``[u.t1, u.t2, u.n]``, targets
``[tau.t1, tau.t2]`` from Reichardt's law), advances its velocity every step (the "solve") and
hands every step to the same ``Coupling`` object the NekRS adapter drives
(``udf/include/nekrs_ml/coupling.hpp``): snapshots, inference with its fallback, the stop
request and the done signal all happen there. Collective operations come from mpi4py.
"""

from __future__ import annotations

import json
import time

import numpy as np

STEP_TIME = 1.0e-3  # solution time per step of the stand-in (informative only)


def solve_step(seconds: float) -> None:
    """Stands in for one solver step. NekRS spends it on the GPU with the host core waiting,
    so the stand-in sleeps rather than spinning: it leaves the CPU to the trainer, as on a node."""
    if seconds > 0:
        time.sleep(seconds)


def mpi_collective(comm):
    """The solver's collective operations for the coupling, over an mpi4py communicator."""
    from mpi4py import MPI

    from . import _core

    def sum_over_ranks(values: np.ndarray) -> np.ndarray:
        comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
        return values

    leader = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank() == 0
    return _core.CallbackCollective(comm.Get_rank(), comm.Get_size(), leader, sum_over_ranks,
                                    comm.Barrier)


def run_solver(par: str) -> dict:
    """Runs the stand-in solver; returns the run summary on rank 0 ({} elsewhere)."""
    from mpi4py import MPI

    from . import _core
    from .launch.settings import ReproducerSettings

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    channel = ReproducerSettings.from_par(par)
    field = _core.SyntheticChannelField(channel.points, channel.re_tau, channel.viscosity,
                                        channel.sample_height, channel.fluctuation,
                                        channel.correlation, channel.seed, rank)
    coupling = _core.Coupling(par, mpi_collective(comm), field)
    last = channel.steps
    comm.Barrier()
    start = time.perf_counter()
    coupling.step(0, 0.0, last == 0)
    step = 0
    while step < last:
        step += 1
        solve_step(channel.step_cost_s)
        field.advance()
        if field.end_step >= 0:  # the coupling ended the run (trainer's request, failures)
            last = min(last, field.end_step)
        coupling.step(step, step * STEP_TIME, step == last)
    summary_text = coupling.finish(step)
    elapsed = time.perf_counter() - start
    if rank != 0:
        return {}
    summary = json.loads(summary_text)
    summary["seconds"] = elapsed
    return summary
