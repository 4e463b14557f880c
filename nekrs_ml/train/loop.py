"""The online training loop of ``nekrs-ml train``.

It is one file because its steps (waiting for data, epochs, the best state, publishing,
checkpoints, status) all read and change the one Trainer's state; the data, model, checkpoints,
outputs and the distributed set-up are modules of their own beside it.

Each epoch every rank consumes the snapshots announced since the last epoch, the normalisation
statistics are summed over the ranks, every rank takes ``stepsPerEpoch`` optimiser steps on
mini-batches from its replay buffer (DistributedDataParallel averages the gradients), and the
validation loss is summed over the ranks. Rank 0 then decides whether to go on and broadcasts
its decision, so all ranks stop together. The best state is published to the model registry
every ``publishInterval`` epochs and at the end.

Convergence is judged on recent data: the validation buffer is a ring that keeps the held-out
rows of the newest snapshots, and whenever new held-out rows arrive the best state is measured
again on them. A developing flow (a laminar transient turning turbulent) makes the old best
worse on the new data, so a model fitted to the transient cannot look converged once the flow
has moved on; and no convergence (nor stop request) is declared before ``minSnapshots``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel

from .. import keys, rundir
from ..models import aot, registry
from ..client import Client
from ..errors import DiskFullError, NekrsMLError
from . import checkpoints, onnx_export, outputs
from .data import Samples, SnapshotReader, Window, moments, validation_period
from .distributed import (TrainingFailed, World, collectively, init_torch_distributed, local_rank,
                          pick_device, server_group)
from .compiler import BackgroundCompiler
from .heartbeat import Heartbeat
from .model import Exporter, build_mlp, deployable, program_bytes
from .settings import Settings

HISTORY_FILE = "trainer_history.jsonl"
POLL_INTERVAL = 0.5  # s between two looks for data while waiting
IDLE_EPOCHS = 2  # epochs without new data, after the solver finished, before stopping
EVAL_CHUNK = 65536  # validation rows per forward pass
COMPILE_WAIT_AT_END = 300.0  # s the final in-process package may take before the trainer exits


class StopSignal:
    """SIGTERM/SIGINT only set a flag: the epoch in progress finishes and the trainer stops."""

    def __init__(self):
        self.received = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True


@dataclass
class Normalisation:
    input_mean: np.ndarray
    input_std: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray

    @classmethod
    def from_vectors(cls, inputs: np.ndarray, targets: np.ndarray, n_in: int, n_out: int):
        return cls(*moments(inputs, n_in), *moments(targets, n_out))

    def on(self, device: torch.device) -> Tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(a, dtype=torch.float32, device=device) for a in
                     (self.input_mean, self.input_std, self.target_mean, self.target_std))


@dataclass
class Best:
    """The model state with the lowest validation loss so far, with its normalisation."""

    loss: float
    epoch: int
    state: dict
    norm: Normalisation
    samples_seen: int


@dataclass
class Progress:
    """What happened on all ranks in one epoch."""

    new_snapshots: int
    solver_done: bool
    signalled: bool
    new_validation: int = 0  # held-out snapshots that arrived in this epoch (all ranks)


class Trainer:
    def __init__(self, settings: Settings, world: World, client: Client, device: torch.device,
                 stop: StopSignal, checkpoint: Optional[dict]):
        self.settings = settings
        self.world = world
        self.client = client
        self.device = device
        self.stop = stop
        self.checkpoint = checkpoint
        self.ns = settings.namespace
        self.exporter = Exporter()
        self.compiler = (BackgroundCompiler(self.ns, settings.model_name, settings.compile_device,
                                            self.say)
                         if settings.compile_device and world.leader else None)
        self.reader = SnapshotReader(client, self.ns, world.group.rank, world.group.size)
        self.samples = Samples(settings.replay_buffer, settings.validation_capacity,
                               validation_period(settings.validation_fraction))
        self.rng = np.random.default_rng(world.rank)  # each rank draws its own mini-batches
        self.epoch = 0
        self.train_loss: Optional[float] = None
        self.val_loss: Optional[float] = None
        self.snapshots = 0  # over all ranks, including those before a resume
        self.samples_seen = 0
        self.best: Optional[Best] = None
        self.stale = 0  # epochs without a significant improvement
        self.non_finite = 0  # epochs in a row whose loss was NaN or infinite
        self.skipped: dict = {}  # bad snapshots skipped on all ranks, by reason
        self.idle = 0  # epochs without new data after the solver finished
        self.version: Optional[int] = None
        self.published_epoch: Optional[int] = None
        self.stats_vectors: Tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
        self.prior = (np.zeros(2), 0.0, 0.0)  # totals of a resumed run: counts, input, target stats
        self.prior_window = Window()  # the snapshots of a resumed run
        self.window = Window()  # steps and times of every snapshot taken, all ranks
        self.best_model: Optional[Tuple[int, torch.nn.Module]] = None  # (epoch, best weights)

    # --- the whole run ----------------------------------------------------------------------
    def run(self) -> int:
        if not self.wait_for_data():
            self.report("done")
            return 0
        self.build_model()
        state, reason = self.train_until_stopped()
        self.finish(state, reason)
        return 0

    def finish(self, state: str, reason: str) -> None:
        self.publish_best()
        if self.compiler is not None:
            self.compiler.close(wait=COMPILE_WAIT_AT_END, stopping=lambda: self.stop.received)
        if self.world.rank == 0:
            self.save_checkpoint()
            self.save_trained_model(state, reason)
        # training is over (converged, or maxEpochs): a solver still running only streams
        # data nobody uses (after a solver that finished, the request is a no-op)
        if state in ("converged", "done") and self.settings.stop_solver:
            self.request_solver_stop()
        self.report(state)
        self.say(f"{reason}; best epoch {self.best.epoch} (loss {self.best.loss:.3e}), "
                 f"model {self.settings.model_name!r} v{self.version}")

    # --- waiting for the first data ---------------------------------------------------------
    def wait_for_data(self) -> bool:
        """Polls until every rank holds training data; False when a signal came first.
        --data-timeout counts from the solver's last progress, not from the start: a slow
        solver on its way to the sampling window (sampleStartTime) is waited for."""
        started = time.monotonic()
        solver_step = None
        self.report("waiting")
        while True:
            done = self.client.exists(keys.solver_done(self.ns))
            self.ingest()
            self.check_skips()
            ranks = self.world.comm.allgather((self.samples.train_rows, done, self.stop.received))
            if self.world.rank == 0:
                step = self.solver_progress()
                if step != solver_step:
                    solver_step, started = step, time.monotonic()
            elapsed = time.monotonic() - started
            verdict = self.waiting_verdict(ranks, elapsed) if self.world.rank == 0 else None
            verdict, message = self.world.comm.bcast(verdict, root=0)
            if verdict == "ready":
                self.check_dims()
                return True
            if verdict == "failed":
                raise TrainingFailed(message)
            if verdict == "signalled":
                return False
            time.sleep(POLL_INTERVAL)

    def waiting_verdict(self, ranks, elapsed: float) -> Tuple[str, str]:
        empty = [rank for rank, (rows, _, _) in enumerate(ranks) if rows == 0]
        if not empty:
            return "ready", ""
        if len(empty) < len(ranks):
            hint = ("the others did; a trainer rank gets data only from the solver ranks it owns "
                    "(split round-robin), so use trainerRanks <= solverRanks")
        else:
            hint = (f"check that the solver streams samples (workflow = train or train+infer) "
                    f"into namespace {self.ns!r} and that the run reaches its sampling window "
                    "(sampleStart, sampleStartTime)")
        if any(signalled for _, _, signalled in ranks):
            return "signalled", ""
        if any(done for _, done, _ in ranks):
            return "failed", (f"the solver finished ({keys.solver_done(self.ns)!r} is set) but "
                              f"trainer rank(s) {empty} received no training data; {hint}")
        if elapsed > self.settings.data_timeout:
            return "failed", (f"no training data on trainer rank(s) {empty} and no solver "
                              f"progress ({keys.solver_step(self.ns)!r}) within --data-timeout "
                              f"{self.settings.data_timeout:g} s; {hint}")
        return "wait", ""

    def solver_progress(self) -> Optional[bytes]:
        """The solver's last control step (None before its first, or when unreadable)."""
        try:
            return self.client.get_string(keys.solver_step(self.ns))
        except NekrsMLError:
            return None

    def check_dims(self) -> None:
        """Every rank (and a resumed checkpoint) must see the same (n_in, n_out)."""
        dims = sorted(set(self.world.comm.allgather(self.samples.dims)))
        if len(dims) > 1:
            raise TrainingFailed(f"the trainer ranks got snapshots of different (inputs, targets) "
                                 f"per sample: {dims}; every solver rank must stream the same "
                                 "features")
        saved = self.checkpoint and (self.checkpoint["n_in"], self.checkpoint["n_out"])
        if saved and saved != dims[0]:
            raise TrainingFailed(f"--resume: the checkpoint has (inputs, targets) = {saved}, the "
                                 f"snapshots {dims[0]}; drop --resume to train a new model")

    def ingest(self) -> int:
        snapshots = self.reader.read_available()
        for snapshot in snapshots:
            self.samples.add(snapshot)
        return len(snapshots)

    def check_skips(self) -> None:
        """Collective: sums the skipped snapshots of all ranks; too many bad ones in a row on
        any rank ends training (the solver streams garbage, the model would learn nothing)."""
        gathered = self.world.comm.allgather(
            (self.reader.skips.counts, self.reader.skips.in_a_row, self.reader.skips.last))
        totals: dict = {}
        for counts, _, _ in gathered:
            for reason, count in counts.items():
                totals[reason] = totals.get(reason, 0) + count
        self.skipped = totals
        in_a_row, last = max((row, last) for _, row, last in gathered)
        if in_a_row >= self.settings.max_skips:
            raise TrainingFailed(
                f"{in_a_row} bad snapshots in a row (skipped so far: {totals}; last {last}); "
                f"check what the solver streams (--max-skips {self.settings.max_skips})")

    # --- model ------------------------------------------------------------------------------
    def build_model(self) -> None:
        n_in, n_out = self.samples.dims
        self.mlp = build_mlp(n_in, self.settings.hidden_layers, n_out).to(self.device)
        self.optimizer = torch.optim.Adam(self.mlp.parameters(), lr=self.settings.learning_rate)
        if self.checkpoint:
            self.restore(self.checkpoint)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.mlp, device_ids=device_ids)

    # --- epochs -----------------------------------------------------------------------------
    def train_until_stopped(self) -> Tuple[str, str]:
        while True:
            self.epoch += 1
            progress, norm = self.sync_epoch()
            scale = norm.on(self.device)
            self.train_loss = self.train_steps(scale)
            self.val_loss = self.validate(scale)
            if progress.new_validation and self.best is not None and self.val_loss is not None:
                self.remeasure_best(scale)
            self.track_best(self.val_loss if self.val_loss is not None else self.train_loss, norm)
            self.idle = self.idle + 1 if progress.solver_done and not progress.new_snapshots else 0
            state, reason = self.world.comm.bcast(
                self.verdict(progress) if self.world.rank == 0 else None, root=0)
            if state == "failed":
                raise TrainingFailed(reason)
            if state != "training":
                return state, reason
            if self.epoch % self.settings.publish_interval == 0:
                self.publish_best()
                if self.world.rank == 0:
                    self.save_checkpoint()
            self.report("training")

    def sync_epoch(self) -> Tuple[Progress, Normalisation]:
        """Ingests new data and sums the counts and statistics over the ranks."""
        done = self.client.exists(keys.solver_done(self.ns))
        comm, samples = self.world.comm, self.samples
        validation_before = samples.validation_snapshots
        new = self.ingest()
        self.check_skips()
        new_validation = samples.validation_snapshots - validation_before
        flags = comm.allreduce(np.array([new, done, self.stop.received, new_validation],
                                        dtype=np.int64), op=MPI.SUM)
        self.window = self.prior_window
        for window in comm.allgather(samples.window):
            self.window = self.window.merge(window)
        counts = comm.allreduce(np.array([samples.snapshots, samples.rows], dtype=np.float64),
                                op=MPI.SUM) + self.prior[0]
        self.snapshots, self.samples_seen = int(counts[0]), int(counts[1])
        inputs = comm.allreduce(samples.input_stats.vector(), op=MPI.SUM) + self.prior[1]
        targets = comm.allreduce(samples.target_stats.vector(), op=MPI.SUM) + self.prior[2]
        self.stats_vectors = (inputs, targets)
        norm = Normalisation.from_vectors(inputs, targets, *samples.dims)
        return Progress(int(flags[0]), bool(flags[1]), bool(flags[2]), int(flags[3])), norm

    def batch(self, inputs: np.ndarray, targets: np.ndarray, scale) -> Tuple[torch.Tensor, ...]:
        """Normalised (x, y) on the training device."""
        in_mean, in_std, out_mean, out_std = scale
        x = torch.from_numpy(inputs).to(self.device, non_blocking=True)
        y = torch.from_numpy(targets).to(self.device, non_blocking=True)
        return (x - in_mean) / in_std, (y - out_mean) / out_std

    def train_steps(self, scale) -> float:
        """``stepsPerEpoch`` steps on every rank (DDP needs the same count); mean loss of all."""
        self.ddp.train()
        total = torch.zeros((), device=self.device)
        for _ in range(self.settings.steps_per_epoch):
            x, y = self.batch(*self.samples.train.sample(self.rng, self.settings.batch_size), scale)
            loss = torch.nn.functional.mse_loss(self.ddp(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        local = float(total) / self.settings.steps_per_epoch
        return self.world.comm.allreduce(local, op=MPI.SUM) / self.world.size

    def validate(self, scale, model=None, model_scale=None) -> Optional[float]:
        """MSE in normalised units (``scale``) over the held-out rows of all ranks; None when
        there are none. ``model`` (default: the current one) works in ``model_scale`` (default:
        ``scale``): its predictions are taken back to physical units and normalised with
        ``scale``, so that models fitted under different statistics compare on the same data."""
        model = model if model is not None else self.mlp
        inputs, targets = self.samples.validation.contents()
        sse = 0.0
        model.eval()
        with torch.no_grad():
            for start in range(0, len(inputs), EVAL_CHUNK):
                chunk = slice(start, start + EVAL_CHUNK)
                x, y = self.batch(inputs[chunk], targets[chunk], scale)
                if model_scale is None:
                    predicted = model(x)
                else:
                    x = self.batch(inputs[chunk], targets[chunk], model_scale)[0]
                    physical = model(x) * model_scale[3] + model_scale[2]
                    predicted = (physical - scale[2]) / scale[3]
                sse += float(torch.sum((predicted - y) ** 2))
        total, count = self.world.comm.allreduce(np.array([sse, targets.size], dtype=np.float64),
                                                 op=MPI.SUM)
        return total / count if count else None

    def remeasure_best(self, scale) -> None:
        """Collective: the best state's loss on the current held-out rows (new data came in),
        so that the current model is compared with it on the same, recent data."""
        best = self.best
        if self.best_model is None or self.best_model[0] != best.epoch:
            n_in, n_out = self.samples.dims
            model = build_mlp(n_in, self.settings.hidden_layers, n_out)
            model.load_state_dict(best.state)
            self.best_model = (best.epoch, model.to(self.device))
        loss = self.validate(scale, self.best_model[1], best.norm.on(self.device))
        if loss is not None and math.isfinite(loss):
            best.loss = loss

    def track_best(self, loss: float, norm: Normalisation) -> None:
        best = self.best
        if not math.isfinite(loss):
            # never a best state, never a step towards convergence; go back to the last good
            # weights (a NaN in them would make every later loss NaN too)
            self.non_finite += 1
            self.roll_back()
            return
        self.non_finite = 0
        if best is None or loss < best.loss * (1.0 - self.settings.min_improvement):
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.mlp.state_dict().items()}
            self.best = Best(loss, self.epoch, state, norm, self.samples_seen)
            self.stale = 0
        else:
            self.stale += 1

    def roll_back(self) -> None:
        """The best weights so far (or the initial ones) and a fresh optimiser state, on every
        rank alike (they all saw the same summed loss)."""
        if self.best is not None:
            self.mlp.load_state_dict(self.best.state)
        else:  # no good state yet: new weights, the same on every rank (same seed)
            torch.manual_seed(self.epoch)
            for layer in self.mlp.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        self.optimizer = torch.optim.Adam(self.mlp.parameters(), lr=self.settings.learning_rate)

    def verdict(self, progress: Progress) -> Tuple[str, str]:
        """Rank 0's decision after an epoch: (state, reason)."""
        state, reason = self.stopping_reason(progress)
        if state == "done" and self.best is None:  # nothing to publish: say why
            return "failed", f"{reason}, and no epoch had a finite loss (lower learningRate)"
        return state, reason

    def stopping_reason(self, progress: Progress) -> Tuple[str, str]:
        s = self.settings
        if progress.signalled:
            return "done", "stopped by a signal"
        if self.non_finite >= s.patience:
            return "failed", (f"the loss was NaN or infinite for {self.non_finite} epochs in a "
                              "row (patience); lower learningRate or check the data")
        # a NaN loss is no evidence of convergence, nor is a fit to too few snapshots (the
        # flow's transient): below minSnapshots training goes on whatever the loss does
        if (self.stale >= s.patience and not self.non_finite
                and self.snapshots >= s.min_snapshots):
            return "converged", (f"converged: no validation improvement of minImprovement = "
                                 f"{s.min_improvement:g} for patience = {s.patience} epochs")
        if self.idle >= IDLE_EPOCHS:
            short = (f" (only {self.snapshots} of minSnapshots = {s.min_snapshots} snapshots: not "
                     "judged converged)" if self.snapshots < s.min_snapshots else "")
            return "done", (f"the solver finished and no new data arrived for {IDLE_EPOCHS} "
                            f"epochs{short}")
        if self.epoch >= s.max_epochs:
            return "done", f"maxEpochs = {s.max_epochs} reached"
        return "training", ""

    # --- publishing, checkpoints, status ----------------------------------------------------
    def publish_best(self) -> None:
        """Rank 0 publishes and takes the version; the leaders of the other servers (colocated
        mode, several nodes) store the same version on theirs."""
        best = self.best
        if best is None or best.epoch == self.published_epoch:
            return
        blob, meta, weights = self.export(best) if self.world.leader else (None, None, None)
        version = None
        if self.world.rank == 0:
            version = registry.publish(self.client, self.ns, self.settings.model_name, blob, meta,
                                       keep_versions=self.settings.keep_versions,
                                       weights_blob=weights)
        version = self.world.comm.bcast(version, root=0)
        if self.world.leader and self.world.rank != 0:
            registry.publish(self.client, self.ns, self.settings.model_name, blob, meta,
                             version=version, keep_versions=self.settings.keep_versions,
                             weights_blob=weights)
        self.version, self.published_epoch = version, best.epoch
        if self.world.leader and self.compiler is not None:
            self.compiler.request(version, meta["graph"])
        self.say(f"epoch {self.epoch}: train loss {_text(self.train_loss)}, val loss "
                 f"{_text(self.val_loss)}; published {self.settings.model_name!r} v{version} "
                 f"(epoch {best.epoch})")

    def model_parts(self, best: Best):
        """(mlp, input mean, input std, target mean, target std) of a best state."""
        n_in, n_out = self.samples.dims
        mlp = build_mlp(n_in, self.settings.hidden_layers, n_out)
        mlp.load_state_dict(best.state)
        norm = best.norm
        return mlp, norm.input_mean, norm.input_std, norm.target_mean, norm.target_std

    def export(self, best: Best) -> Tuple[bytes, dict, bytes]:
        """(torch.export program, metadata, weights for in-process inference) of a best state."""
        n_in, n_out = self.samples.dims
        norm = best.norm
        meta = {"n_in": n_in, "n_out": n_out, "dtype": "float32",
                "input_mean": norm.input_mean.tolist(), "input_std": norm.input_std.tolist(),
                "target_mean": norm.target_mean.tolist(), "target_std": norm.target_std.tolist(),
                "origin": "trainer", "epoch": best.epoch, "samples_seen": best.samples_seen,
                "val_loss": _finite(best.loss), "hidden_layers": list(self.settings.hidden_layers)}
        if self.settings.export_format == onnx_export.FORMAT:  # ONNX Runtime; no in-process form
            meta.update(format="onnx", backend="onnx")
            return onnx_export.onnx_bytes(deployable(*self.model_parts(best)), n_in), meta, None
        program = self.exporter.program_for(deployable(*self.model_parts(best)))
        weights = aot.weights_blob(program, n_in, n_out)
        meta.update(format="export", graph=aot.graph_id(program, n_in, n_out))
        return program_bytes(program), meta, weights

    def save_trained_model(self, state: str, reason: str) -> None:
        """Rank 0: the final version into the run directory, named in trainer.json, so that a
        later run deploys it after this run's database is gone."""
        fields = outputs.save_model(self.client, self.ns, self.settings.model_name, self.version,
                                    self.settings.run_dir,
                                    ".onnx" if self.settings.export_format == "onnx" else ".pt")
        best = self.best
        outputs.write_summary(self.settings.run_dir, dict(
            fields, state=state, reason=reason, best_epoch=best.epoch if best else None,
            best_val_loss=_finite(best.loss) if best else None, epochs=self.epoch,
            snapshots=self.snapshots, samples_seen=self.samples_seen,
            data_window=self.window.as_dict()))
        if fields["model_file"]:
            self.say(f"wrote {fields['model_file']} (v{self.version}; deployModel accepts it)")
        else:
            self.say(f"no model file in {self.settings.run_dir}: {fields['model_file_error']}")

    def request_solver_stop(self) -> None:
        if self.world.leader:
            self.client.set_string(keys.trainer_stop(self.ns), "1")
        self.say(f"asked the solver to stop ({keys.trainer_stop(self.ns)!r})")

    def save_checkpoint(self) -> None:
        n_in, n_out = self.samples.dims
        best = self.best
        if best is None:  # every loss so far was NaN or infinite: nothing worth resuming from
            return
        checkpoints.save(self.settings.checkpoint_dir, self.epoch, {
            "epoch": self.epoch, "n_in": n_in, "n_out": n_out,
            "hidden_layers": list(self.settings.hidden_layers),
            "model": self.mlp.state_dict(), "optimizer": self.optimizer.state_dict(),
            "input_stats": self.stats_vectors[0], "target_stats": self.stats_vectors[1],
            "counts": np.array([self.snapshots, self.samples_seen], dtype=np.float64),
            "window": self.window.as_dict(),
            "best": vars(best) | {"norm": vars(best.norm)}, "stale": self.stale,
            "model_version": self.version, "published_epoch": self.published_epoch,
        })

    def restore(self, saved: dict) -> None:
        if tuple(saved["hidden_layers"]) != self.settings.hidden_layers:
            raise TrainingFailed(
                f"--resume: the checkpoint has hiddenLayers = {saved['hidden_layers']}, the case "
                f"{list(self.settings.hidden_layers)}; use the same hiddenLayers or drop --resume")
        self.mlp.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.prior = (saved["counts"], saved["input_stats"], saved["target_stats"])
        self.prior_window = Window(**saved.get("window", {}))
        best = dict(saved["best"])
        self.best = Best(**(best | {"norm": Normalisation(**best["norm"])}))
        self.epoch, self.stale = saved["epoch"], saved["stale"]
        self.version, self.published_epoch = saved["model_version"], saved["published_epoch"]

    def report(self, state: str) -> None:
        """Rank 0 records the state of the run."""
        if self.world.rank == 0:
            self.write_status(self.status(state))

    def status(self, state: str) -> dict:
        return {"epoch": self.epoch, "train_loss": _finite(self.train_loss),
                "val_loss": _finite(self.val_loss), "samples_seen": self.samples_seen,
                "snapshots": self.snapshots, "model_version": self.version,
                "data_window": self.window.as_dict(),
                "skipped": dict(self.skipped), "time": time.time(), "state": state}

    def write_status(self, record: dict) -> None:
        """The status key (overwritten) and one line of the history file."""
        text = json.dumps(record)
        self.client.set_string(keys.trainer_status(self.ns), text)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.append_line(self.settings.run_dir / HISTORY_FILE, text)

    def say(self, text: str) -> None:
        if self.world.rank == 0:
            print(text, flush=True)


def _finite(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN or infinity: a diverged loss is written as null."""
    return value if value is not None and math.isfinite(value) else None


def _text(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3e}"


# --- entry point ----------------------------------------------------------------------------
def create(args, comm: MPI.Comm, stop: StopSignal) -> Trainer:
    """Set-up; an error on any rank fails every rank with that message."""
    settings = collectively(comm, lambda: Settings.from_args(args))
    if comm.size > 1:
        torch.set_num_threads(1)  # the ranks share the node's cores
    node_rank = local_rank(comm)
    device = collectively(comm, lambda: pick_device(settings.train_device, node_rank))
    client = collectively(comm, Client.from_env)
    # a checkpointDir that is not ours is refused at the start, not at the first checkpoint
    collectively(comm, lambda: rundir.private_dir(settings.checkpoint_dir) if comm.rank == 0
                 else None)
    checkpoint = collectively(comm, lambda: checkpoints.load_latest(settings.checkpoint_dir)) \
        if settings.resume else None
    world = World(comm, server_group(comm, client))
    init_torch_distributed(comm, device)
    return Trainer(settings, world, client, device, stop, checkpoint)


def main(args) -> int:
    """Exit code 0 when training ended normally, 1 with a one-line message otherwise."""
    comm = MPI.COMM_WORLD
    stop = StopSignal()
    trainer = None
    heartbeat = None
    try:
        trainer = create(args, comm, stop)
        heartbeat = Heartbeat(Client.from_env, trainer.ns).start()
        return trainer.run()
    except TrainingFailed as exc:  # every rank is here: no one is left waiting
        if comm.rank == 0:
            fail(trainer, str(exc))
        return 1
    except DiskFullError as exc:  # its message names the file and the file system
        fail(trainer, f"(trainer rank {comm.rank}) {exc}", disk_full=True)
        if comm.size > 1:
            comm.Abort(1)
        return 1
    except Exception as exc:  # noqa: BLE001 - this rank alone failed: the others must not hang
        fail(trainer, f"(trainer rank {comm.rank}) {first_line(exc)}")
        if comm.size > 1:
            comm.Abort(1)
        return 1
    finally:
        if trainer is not None and trainer.compiler is not None:
            trainer.compiler.close(wait=0)  # an error or a signal: no compiler left behind
        if heartbeat is not None:
            heartbeat.stop()
        if dist.is_initialized():
            dist.destroy_process_group()


def first_line(exc: Exception) -> str:
    """The error in one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def fail(trainer: Optional[Trainer], message: str, disk_full: bool = False) -> None:
    """The error on stderr and in the status key (the launcher reads it there, also when the
    disk is too full for the history file: ``disk_full``)."""
    try:
        print(f"nekrs-ml train: error: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass
    if trainer is not None:
        try:
            trainer.write_status(trainer.status("failed") | {"error": message,
                                                             "disk_full": disk_full})
        except Exception:  # noqa: BLE001 - the status is a courtesy; the exit code is what counts
            pass
