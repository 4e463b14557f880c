"""`nekrs-ml reproduce CASE.par`: the stand-in solver (run under mpiexec).

It drives the C++ core through the bindings the way the NekRS plugin does: each rank owns
wall points of a turbulent channel, advances a synthetic off-wall velocity every step (the
"solve"), and every ``sampleInterval`` steps streams (velocity at h -> Reichardt wall shear
stress) snapshots with ``TrainingStream``. Control keys (stop request) are read every
``sampleInterval`` steps and agreed on by all ranks with one allreduce, as the plugin does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

from . import environment, keys
from .cli import command


def solve_step(seconds: float) -> None:
    """Stands in for one solver step. NekRS spends it on the GPU with the host core waiting,
    so the stand-in sleeps rather than spinning: it leaves the CPU to the trainer, as on a node."""
    if seconds > 0:
        time.sleep(seconds)


def node_leader(comm) -> bool:
    """True on the first rank of each node: it writes the per-server control keys."""
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank() == 0


def run_solver(par: str) -> dict:
    from mpi4py import MPI

    from . import _core
    from .config import load_par

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    cfg = load_par(par)
    ml, rp = cfg["nekrs_ml"], cfg["reproducer"]
    ns = os.environ.get(environment.NAMESPACE) or ml["namespace"]
    training = ml["workflow"] in ("train", "train+infer")
    dtype = np.float32 if ml["snapshotDtype"] == "float32" else np.float64

    client = _core.Client.from_env()
    client.timeout = ml["timeout"]
    sampler = _core.ChannelWallSampler(rp["points"], rp["reTau"], rp["viscosity"], ml["sampleHeight"],
                                       rp["fluctuation"], rp["correlation"], rp["seed"], rank)
    stream = (_core.TrainingStream(client, ns, rank, ml["sampleInterval"], ml["maxSnapshots"],
                                   ml["whenFull"], ml["waitTimeout"]) if training else None)
    inputs = np.empty((rp["points"], 1), dtype=dtype)
    targets = np.empty((rp["points"], 1), dtype=dtype)
    digest = hashlib.sha256()
    put_seconds, warnings, step, stopped = [], 0, 0, False
    dt = 1.0e-3
    comm.Barrier()
    start = time.perf_counter()
    for step in range(1, rp["steps"] + 1):
        solve_step(rp["stepCost"])
        sampler.advance()
        if stream is not None and stream.due(step):
            sampler.fill(inputs, targets)
            digest.update(inputs.tobytes())
            digest.update(targets.tobytes())
            result = stream.put(step, step * dt, inputs, targets)
            put_seconds.append(result["seconds"])
            if result["warning"]:
                warnings += 1
                if warnings <= 3:
                    print(f"reproducer rank {rank}: warning: {result['warning']}", file=sys.stderr)
        if step % ml["sampleInterval"] == 0:
            if rank == 0:
                client.set_string(keys.solver_step(ns), str(step))
            requested = _core.TrainingStream.stop_requested(client, ns)
            if comm.allreduce(int(requested), op=MPI.MAX):
                stopped = True
                break
    elapsed = time.perf_counter() - start
    comm.Barrier()
    if node_leader(comm):
        client.set_string(keys.solver_step(ns), str(step))
        _core.TrainingStream.mark_done(client, ns)
    written = comm.allreduce(stream.snapshots_written if stream else 0)
    dropped = comm.allreduce(stream.snapshots_dropped if stream else 0)
    digests = comm.gather(digest.hexdigest(), root=0)
    put_all = comm.gather(put_seconds, root=0)
    if rank != 0:
        return {}
    flat = np.array([s for per_rank in put_all for s in per_rank]) if put_all else np.array([])
    return {
        "steps": step, "ranks": comm.Get_size(), "stopped_by_trainer": stopped,
        "snapshots_written": written, "snapshots_dropped": dropped,
        "seconds": elapsed,
        "put_ms_median": float(np.median(flat) * 1e3) if flat.size else None,
        "data_sha256": hashlib.sha256("".join(digests).encode()).hexdigest(),
    }


@command("reproduce", "stand-in MPI solver streaming channel wall samples (run under mpiexec)")
def _reproduce(parser: argparse.ArgumentParser):
    parser.add_argument("par", help="case .par file with [NEKRS_ML] and [REPRODUCER] sections")
    parser.add_argument("--summary", help="write the run summary (JSON) to this file (rank 0)")

    def run(args) -> int:
        summary = run_solver(args.par)
        if summary:
            text = json.dumps(summary)
            print(f"reproducer: {text}", flush=True)
            if args.summary:
                with open(args.summary, "w") as handle:
                    handle.write(text + "\n")
        return 0
    return run
