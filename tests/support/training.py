"""A stand-in solver thread that streams wall samples of the Reichardt law with the solver's
protocol, and `nekrs-ml train` under mpiexec against it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

import nekrs_ml
from nekrs_ml import environment, keys


KAPPA, HEIGHT, NU = 0.41, 0.1, 1.0 / 19000.0


U_RANGE = (0.6, 1.1)


# --- the Reichardt law of the wall ----------------------------------------------------------
def reichardt_uplus(yplus: np.ndarray) -> np.ndarray:
    return (np.log1p(KAPPA * yplus) / KAPPA
            + 7.8 * (1.0 - np.exp(-yplus / 11.0) - yplus / 11.0 * np.exp(-yplus / 3.0)))


def wall_shear_stress(u: np.ndarray) -> np.ndarray:
    """tau_w = u_tau^2 with u / u_tau = u+(h u_tau / nu), by bisection on log(u_tau) (the
    residual falls monotonically with u_tau)."""
    low, high = np.full_like(u, np.log(1e-6)), np.log(u)
    for _ in range(100):
        mid = 0.5 * (low + high)
        u_tau = np.exp(mid)
        above = u / u_tau - reichardt_uplus(HEIGHT * u_tau / NU) > 0
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    return np.exp(low + high)


# --- a stand-in solver speaking the streaming protocol --------------------------------------
class StreamingSolver(threading.Thread):
    """Each rank: SADD its rank, then per snapshot the two tensors and the announcement; the
    oldest snapshots beyond ``keep`` are dropped. Runs for ``duration`` s or until the trainer
    asks it to stop, then sets solver_done."""

    def __init__(self, client_args: dict, ns: str, ranks=2, points=400, interval=0.2,
                 duration=20.0, keep=8, seed=0):
        super().__init__(daemon=True)
        self.client = nekrs_ml.Client(**client_args)
        self.ns, self.ranks, self.points, self.interval = ns, ranks, points, interval
        self.duration, self.keep = duration, keep
        self.rng = np.random.default_rng(seed)
        self.written = 0
        self.stop_seen = False
        self.error = None
        self.halted = threading.Event()  # set by the test when it ends early

    def run(self) -> None:
        try:
            self.stream()
            self.client.set_string(keys.solver_done(self.ns), "1")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stream(self) -> None:
        for rank in range(self.ranks):
            members = keys.solver_members(self.ns)
            self.client.command(["SADD", members, str(rank)], key=members)
        started, seq = time.monotonic(), 0
        while time.monotonic() - started < self.duration and not self.halted.is_set():
            if self.client.exists(keys.trainer_stop(self.ns)):
                self.stop_seen = True
                return
            for rank in range(self.ranks):
                self.write(rank, seq)
            seq += 1
            time.sleep(self.interval)

    def write(self, rank: int, seq: int) -> None:
        dtype = np.float32 if rank % 2 == 0 else np.float64  # both wire formats
        u = self.rng.uniform(*U_RANGE, size=(self.points, 1))
        self.client.put_tensor(keys.snapshot_inputs(self.ns, rank, seq), u.astype(dtype))
        self.client.put_tensor(keys.snapshot_targets(self.ns, rank, seq),
                               wall_shear_stress(u).astype(dtype))
        index = keys.snapshot_index(self.ns, rank)
        self.client.list_push(index, f"{seq} {seq * 10} {seq * 0.01:.6f}")
        self.written += 1
        if self.client.list_length(index) > self.keep:  # retention limit: drop the oldest
            oldest = self.client.command(["LPOP", index])
            if oldest is not None:
                old = int(oldest.split()[0])
                self.client.delete(keys.snapshot_inputs(self.ns, rank, old))
                self.client.delete(keys.snapshot_targets(self.ns, rank, old))


# --- helpers --------------------------------------------------------------------------------
TRAIN_OPTIONS = dict(modelName="tau_model", hiddenLayers="32, 32", learningRate=0.003,
                     batchSize=256, stepsPerEpoch=10, replayBuffer=40000,
                     validationFraction=0.1, publishInterval=20, patience=100000,
                     minImprovement=0.0, maxEpochs=100000, checkpointDir="ckpt")


def write_par(directory: str, **options) -> str:
    path = Path(directory, "case.par")
    lines = ["[GENERAL]", "stopAt = numSteps", "", "[NEKRS_ML]"]
    lines += [f"{key} = {value}" for key, value in {**TRAIN_OPTIONS, **options}.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@contextlib.contextmanager
def training(par: str, run_dir: str, env: dict, solver: StreamingSolver, ranks: int = 2,
             extra=()):
    """The trainer under mpiexec next to the solver thread; on the way out (also when the test
    fails) the trainer's whole process group is killed if still running and the solver halted,
    once it has had the time to see a stop request of the trainer."""
    argv = ["mpiexec", "-n", str(ranks), "--oversubscribe", sys.executable, "-m", "nekrs_ml.cli",
            "train", par, "--run-dir", run_dir, "--data-timeout", "60", *extra]
    with open(Path(run_dir, "trainer.log"), "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        solver.start()
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if solver.client.exists(keys.trainer_stop(solver.ns)):
            solver.join(timeout=10)  # it sees the stop request at its next snapshot
        solver.halted.set()
        solver.join(timeout=30)


def trainer_env(server, ns: str) -> dict:
    return {**os.environ, **server.info["env"], environment.NAMESPACE: ns}


def log_of(run_dir: str) -> str:
    return Path(run_dir, "trainer.log").read_text(errors="replace")[-4000:]


def fresh_namespace() -> str:
    return "t" + uuid.uuid4().hex[:8]
