"""`nekrs-ml reproduce CASE.par`: the stand-in solver (run under mpiexec).

It drives the C++ core through the bindings the way the NekRS plugin does: each rank owns
wall points of a turbulent channel, advances a synthetic off-wall velocity every step (the
"solve"), and every ``sampleInterval`` steps streams (velocity at h -> Reichardt wall shear
stress) snapshots with ``TrainingStream``. With ``workflow = infer`` or ``train+infer`` it asks
the model workers for the wall shear stress every ``inferenceInterval`` steps through
``InferenceClient`` and records the model version used and the error against the Reichardt
solution. Control keys (stop request) are read every ``sampleInterval`` steps and agreed on by
all ranks with one allreduce, as the plugin does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback

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


class InferenceLog:
    """What one rank saw of its inference calls: version, error and latency per call."""

    def __init__(self):
        self.steps, self.versions, self.errors, self.seconds = [], [], [], []
        self.waiting = 0  # calls before the first published version (train+infer)

    def record(self, step: int, version: int, rel_error: float, seconds: float) -> None:
        self.steps.append(step)
        self.versions.append(version)
        self.errors.append(rel_error)
        self.seconds.append(seconds)


def version_segments(steps, versions):
    """[[first step, last step, version], ...] of consecutive calls with the same version."""
    segments = []
    for step, version in zip(steps, versions):
        if segments and segments[-1][2] == version:
            segments[-1][1] = step
        else:
            segments.append([step, step, version])
    return segments


def inference_summary(logs) -> dict:
    """Rank 0's version per step plus latency and error over all ranks."""
    seconds = np.array([s for log in logs for s in log.seconds])
    summary = {"calls": int(seconds.size), "waiting_calls": sum(log.waiting for log in logs)}
    if not seconds.size:
        return summary
    versions = np.array([v for log in logs for v in log.versions])
    errors = np.array([e for log in logs for e in log.errors])
    final = errors[versions == versions.max()]
    # ranks may switch one call apart at a reload: count the steps where they differ
    by_step = {}
    for log in logs:
        for step, version in zip(log.steps, log.versions):
            by_step.setdefault(step, set()).add(version)
    summary.update({
        "latency_ms_p50": float(np.percentile(seconds, 50) * 1e3),
        "latency_ms_p99": float(np.percentile(seconds, 99) * 1e3),
        "versions": sorted({int(v) for v in versions}),
        "version_by_step": version_segments(logs[0].steps, logs[0].versions),
        "steps_with_mixed_versions": sum(len(v) > 1 for v in by_step.values()),
        "final_version": int(versions.max()),
        "tau_w_rel_error_final": {"median": float(np.median(final)),
                                  "p95": float(np.percentile(final, 95)), "calls": int(final.size)},
    })
    return summary


def report_step(client, ns: str, step: int) -> None:
    """The progress key is informative: a full server (maxmemory) may refuse it."""
    from .errors import ServerError

    try:
        client.set_string(keys.solver_step(ns), str(step))
    except ServerError as exc:
        if "OOM command not allowed" not in str(exc):
            raise


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
    inferring = ml["workflow"] in ("infer", "train+infer")
    dtype = np.float32 if ml["snapshotDtype"] == "float32" else np.float64

    client = _core.Client.from_env()
    client.timeout = ml["timeout"]
    sampler = _core.ChannelWallSampler(rp["points"], rp["reTau"], rp["viscosity"], ml["sampleHeight"],
                                       rp["fluctuation"], rp["correlation"], rp["seed"], rank)
    stream = (_core.TrainingStream(client, ns, rank, ml["sampleInterval"], ml["maxSnapshots"],
                                   ml["whenFull"], ml["waitTimeout"]) if training else None)
    inference = (_core.InferenceClient(client, ns, rank, ml["workers"], ml["inferenceTimeout"])
                 if inferring else None)
    log = InferenceLog()
    inputs = np.empty((rp["points"], 1), dtype=dtype)
    targets = np.empty((rp["points"], 1), dtype=dtype)
    # the model is float32, whatever the snapshot precision
    model_inputs = np.empty((rp["points"], 1), dtype=np.float32)
    model_targets = np.empty((rp["points"], 1), dtype=np.float32)
    predictions = np.empty((rp["points"], 1), dtype=np.float32)
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
        if inference is not None and (step - 1) % ml["inferenceInterval"] == 0:
            sampler.fill(model_inputs, model_targets)
            infer_step(inference, ml, model_inputs, model_targets, predictions, step, log)
        if step % ml["sampleInterval"] == 0:
            if rank == 0:
                report_step(client, ns, step)
            requested = _core.TrainingStream.stop_requested(client, ns)
            if comm.allreduce(int(requested), op=MPI.MAX):
                stopped = True
                break
    elapsed = time.perf_counter() - start
    comm.Barrier()
    if node_leader(comm):
        report_step(client, ns, step)
        _core.TrainingStream.mark_done(client, ns)
    written = comm.allreduce(stream.snapshots_written if stream else 0)
    dropped = comm.allreduce(stream.snapshots_dropped if stream else 0)
    digests = comm.gather(digest.hexdigest(), root=0)
    put_all = comm.gather(put_seconds, root=0)
    logs = comm.gather(log, root=0)
    if rank != 0:
        return {}
    flat = np.array([s for per_rank in put_all for s in per_rank]) if put_all else np.array([])
    return {
        "steps": step, "ranks": comm.Get_size(), "stopped_by_trainer": stopped,
        "snapshots_written": written, "snapshots_dropped": dropped,
        "seconds": elapsed,
        "put_ms_median": float(np.median(flat) * 1e3) if flat.size else None,
        "data_sha256": hashlib.sha256("".join(digests).encode()).hexdigest(),
        "inference": inference_summary(logs) if inferring else None,
    }


def infer_step(inference, ml, inputs, targets, predictions, step, log) -> None:
    """One inference call; before the trainer's first version (train+infer) the solver goes on
    without predictions, as a wall-modelled solver would with its initial wall law."""
    from .errors import KeyNotFoundError

    try:
        reply = inference.run(ml["modelName"], inputs, predictions)
    except KeyNotFoundError:
        if ml["workflow"] == "train+infer" and not log.versions:
            log.waiting += 1
            return
        raise
    rel_error = float(np.median(np.abs(predictions - targets) / np.abs(targets)))
    log.record(step, reply["version"], rel_error, reply["seconds"])


@command("reproduce", "stand-in MPI solver streaming channel wall samples (run under mpiexec)")
def _reproduce(parser: argparse.ArgumentParser):
    parser.add_argument("par", help="case .par file with [NEKRS_ML] and [REPRODUCER] sections")
    parser.add_argument("--summary", help="write the run summary (JSON) to this file (rank 0)")

    def run(args) -> int:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        try:
            summary = run_solver(args.par)
        except Exception:  # noqa: BLE001 - this rank alone failed: the others must not hang
            traceback.print_exc()
            if comm.Get_size() > 1:
                comm.Abort(1)  # the other ranks may wait in a collective call forever
            return 1
        if summary:
            text = json.dumps(summary)
            print(f"reproducer: {text}", flush=True)
            if args.summary:
                with open(args.summary, "w") as handle:
                    handle.write(text + "\n")
        return 0
    return run
