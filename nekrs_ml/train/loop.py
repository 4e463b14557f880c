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

A trainer may read several streams (ensemble members, ``--stream NAME=NAMESPACE``): each member
has its own replay buffer and held-out rows, mini-batches draw from the members as
``memberSampling`` says, the validation loss is the mean of the members' losses, and the status
reports each member (snapshots, drops, skips, validation loss, a-priori error of the best model).
With ``features = wall_units`` every snapshot is scaled with its stream's case record before it
is stored (nekrs_ml.models.features) and the model is a WallUnitsModel.
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
from ..models import features as feature_schemes
from .data import Members, PendingCases, Snapshot, SnapshotReader, Window, moments, \
    validation_period
from .model import (DIRECTION_STD_FLOOR, WALL_UNIT_INPUTS, WALL_UNIT_TARGETS, wall_unit_inputs,
                    wall_unit_input_features, wall_unit_target_features, wall_unit_targets)
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
APRIORI_ROWS = 4096  # held-out rows per member and trainer rank in the a-priori error


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

    def floored(self, wall_units: bool) -> "Normalisation":
        """Wall-unit features: the direction features may be constant (every sample along t1);
        their scale is floored so that rounding noise is not blown up."""
        if wall_units:
            self.input_std = self.input_std.copy()
            self.target_std = self.target_std.copy()
            self.input_std[1:] = np.maximum(self.input_std[1:], DIRECTION_STD_FLOOR)
            self.target_std[1:] = np.maximum(self.target_std[1:], DIRECTION_STD_FLOOR)
        return self

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
        self.reader = SnapshotReader(client, self.ns, world.group.rank, world.group.size,
                                     consumer=settings.consumer,
                                     streams=settings.streams or None)
        self.stream_names = list(self.reader.streams)
        self.wall_units = settings.features == feature_schemes.WALL_UNITS
        self.cases = PendingCases([s.stream for s in self.reader.streams.values()],
                                  settings.data_timeout) if self.wall_units else None
        self.samples = Members(self.stream_names, settings.replay_buffer,
                               settings.validation_capacity,
                               validation_period(settings.validation_fraction))
        self.members: dict = {name: {} for name in self.stream_names}  # status, all ranks
        self.member_loss: dict = {}  # validation loss per member (None: no held-out rows)
        self.apriori: dict = {}  # a-priori error of the best state per member
        self.apriori_key = None  # (best epoch, held-out snapshots) it was measured for
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
    def join_streams(self) -> None:
        """This trainer joins the consumer group of every stream it reads, on its server."""
        if self.world.group.rank == 0:  # one SADD per server is enough
            self.reader.join()

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
            done = self.solvers_done()
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

    def solver_progress(self) -> Optional[tuple]:
        """The last control step of every stream's solver (None before its first, or when
        unreadable): progress of any of them restarts --data-timeout."""
        try:
            return tuple(self.client.get_string(keys.solver_step(s.ns)) for s in self.stream_list)
        except NekrsMLError:
            return None

    @property
    def stream_list(self):
        return [state.stream for state in self.reader.streams.values()]

    def solvers_done(self) -> bool:
        """Every stream's solver has finished."""
        return all(self.client.exists(keys.solver_done(s.ns)) for s in self.stream_list)

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
        if self.cases is not None:  # wall units: a snapshot waits for its stream's case record
            snapshots = self.cases.take(self.client, snapshots)
        for snapshot in snapshots:
            self.samples.add(self.stored_form(snapshot))
        return len(snapshots)

    def stored_form(self, snapshot: Snapshot) -> Snapshot:
        """What the buffers keep: the snapshot itself (dimensional), or its wall-scaled
        features (the log-magnitude transform of WallUnitsModel)."""
        if not self.wall_units:
            return snapshot
        widths = (snapshot.inputs.shape[1], snapshot.targets.shape[1])
        if widths != (WALL_UNIT_INPUTS, WALL_UNIT_TARGETS):
            raise NekrsMLError(
                f"features = wall_units takes {WALL_UNIT_INPUTS} inputs [u.t1, u.t2, u.n] and "
                f"{WALL_UNIT_TARGETS} targets [tau.t1, tau.t2] per point; stream "
                f"{snapshot.stream!r} sends {widths[0]} / {widths[1]}: set features = dimensional")
        case = self.cases.cases[snapshot.stream]
        x = feature_schemes.to_model_inputs(np.asarray(snapshot.inputs, np.float64),
                                            feature_schemes.WALL_UNITS, case)
        tau = feature_schemes.to_model_targets(np.asarray(snapshot.targets, np.float64),
                                               feature_schemes.WALL_UNITS, case)
        return Snapshot(snapshot.rank, snapshot.seq, snapshot.step, snapshot.time,
                        wall_unit_input_features(x).astype(np.float32),
                        wall_unit_target_features(tau, x).astype(np.float32), snapshot.stream)

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
            self.measure_apriori()
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
        done = self.solvers_done()
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
        local_inputs, local_targets = samples.stats_vectors(*samples.dims)
        inputs = comm.allreduce(local_inputs, op=MPI.SUM) + self.prior[1]
        targets = comm.allreduce(local_targets, op=MPI.SUM) + self.prior[2]
        self.stats_vectors = (inputs, targets)
        norm = Normalisation.from_vectors(inputs, targets, *samples.dims).floored(self.wall_units)
        self.gather_members()
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
            x, y = self.batch(*self.samples.sample(self.rng, self.settings.batch_size,
                                                   self.settings.member_sampling), scale)
            loss = torch.nn.functional.mse_loss(self.ddp(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        local = float(total) / self.settings.steps_per_epoch
        return self.world.comm.allreduce(local, op=MPI.SUM) / self.world.size

    def validate(self, scale, model=None, model_scale=None) -> Optional[float]:
        """MSE in normalised units (``scale``) over the held-out rows of all ranks, the mean of
        the members' (streams') losses; None when there are none. ``model`` (default: the
        current one) works in ``model_scale`` (default: ``scale``): its predictions are taken
        back to physical units and normalised with ``scale``, so that models fitted under
        different statistics compare on the same data. The current model's loss per member is
        kept in ``member_loss``."""
        current = model is None
        model = model if model is not None else self.mlp
        sums = []
        model.eval()
        with torch.no_grad():
            for name in self.stream_names:
                validation = self.samples.by_name[name].validation
                inputs, targets = validation.contents() if validation else (np.zeros((0, 1)),) * 2
                sse = 0.0
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
                sums += [sse, targets.size if len(inputs) else 0]
        totals = self.world.comm.allreduce(np.array(sums, dtype=np.float64), op=MPI.SUM)
        losses = {name: (totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else None)
                  for i, name in enumerate(self.stream_names)}
        if current:
            self.member_loss = losses
        present = [loss for loss in losses.values() if loss is not None]
        return float(np.mean(present)) if present else None

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

    # --- per member ---------------------------------------------------------------------------
    def gather_members(self) -> None:
        """Collective: each member's snapshots, drops and skips summed over the ranks."""
        local = {}
        for name, state in self.reader.streams.items():
            dropped = state.dropped + (self.cases.dropped.get(name, 0) if self.cases else 0)
            local[name] = (self.samples.by_name[name].snapshots, dropped,
                           dict(state.skips.counts))
        members = {name: {"snapshots": 0, "dropped": 0, "skipped": {}}
                   for name in self.stream_names}
        for gathered in self.world.comm.allgather(local):
            for name, (snapshots, dropped, skipped) in gathered.items():
                member = members[name]
                member["snapshots"] += snapshots
                member["dropped"] += dropped
                for reason, count in skipped.items():
                    member["skipped"][reason] = member["skipped"].get(reason, 0) + count
        self.members = members

    def measure_apriori(self) -> None:
        """Collective: the relative error |tau_pred - tau| / |tau| (vector norms) of the best
        state on each member's held-out rows (in wall units the same ratio as in physical
        units: one factor per member), measured again when the best state or the held-out
        rows changed."""
        best = self.best
        if best is None:
            return
        held_out = self.world.comm.allreduce(self.samples.validation_snapshots, op=MPI.SUM)
        if self.apriori_key == (best.epoch, held_out):
            return
        self.apriori_key = (best.epoch, held_out)
        model = self.deployable_best(best)
        local = {}
        with torch.no_grad():
            for name in self.stream_names:
                validation = self.samples.by_name[name].validation
                if validation is None or not len(validation):
                    local[name] = np.zeros(0)
                    continue
                inputs, targets = validation.contents()
                inputs, targets = inputs[-APRIORI_ROWS:], targets[-APRIORI_ROWS:]
                if self.wall_units:  # the buffers hold features: back to wall-scaled samples
                    x, true = wall_unit_inputs(inputs), wall_unit_targets(targets, inputs)
                else:
                    x, true = inputs, np.asarray(targets, np.float64)
                predicted = model(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
                local[name] = feature_schemes.relative_errors(predicted, true)
        gathered = self.world.comm.gather(local, root=0)
        if self.world.rank != 0:
            return
        for name in self.stream_names:
            self.apriori[name] = feature_schemes.error_summary(
                np.concatenate([g[name] for g in gathered]))

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

    def raw_dims(self) -> Tuple[int, int]:
        """(n_in, n_out) of the deployed model (wall units: the samples', not the features')."""
        return (WALL_UNIT_INPUTS, WALL_UNIT_TARGETS) if self.wall_units else self.samples.dims

    def model_parts(self, best: Best):
        """(mlp, input mean, input std, target mean, target std) of a best state."""
        n_in, n_out = self.samples.dims
        mlp = build_mlp(n_in, self.settings.hidden_layers, n_out)
        mlp.load_state_dict(best.state)
        norm = best.norm
        return mlp, norm.input_mean, norm.input_std, norm.target_mean, norm.target_std

    def deployable_best(self, best: Best):
        return deployable(*self.model_parts(best), wall_units=self.wall_units)

    def export(self, best: Best) -> Tuple[bytes, dict, bytes]:
        """(torch.export program, metadata, weights for in-process inference) of a best state."""
        n_in, n_out = self.raw_dims()
        norm = best.norm
        meta = {"n_in": n_in, "n_out": n_out, "dtype": "float32",
                "input_mean": norm.input_mean.tolist(), "input_std": norm.input_std.tolist(),
                "target_mean": norm.target_mean.tolist(), "target_std": norm.target_std.tolist(),
                "origin": "trainer", "epoch": best.epoch, "samples_seen": best.samples_seen,
                "val_loss": _finite(best.loss), "hidden_layers": list(self.settings.hidden_layers),
                "features": self.settings.features}
        if self.settings.export_format == onnx_export.FORMAT:  # ONNX Runtime; no in-process form
            meta.update(format="onnx", backend="onnx")
            return onnx_export.onnx_bytes(self.deployable_best(best), n_in), meta, None
        program = self.exporter.program_for(self.deployable_best(best))
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
            self.client.set_string(keys.trainer_stop(self.ns, self.settings.trainer), "1")
        self.say(f"asked the solver to stop "
                 f"({keys.trainer_stop(self.ns, self.settings.trainer)!r})")

    def save_checkpoint(self) -> None:
        n_in, n_out = self.samples.dims
        best = self.best
        if best is None:  # every loss so far was NaN or infinite: nothing worth resuming from
            return
        checkpoints.save(self.settings.checkpoint_dir, self.epoch, {
            "epoch": self.epoch, "n_in": n_in, "n_out": n_out,
            "hidden_layers": list(self.settings.hidden_layers), "features": self.settings.features,
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
        if saved.get("features", feature_schemes.DIMENSIONAL) != self.settings.features:
            raise TrainingFailed(
                f"--resume: the checkpoint has features = {saved.get('features', 'dimensional')}, "
                f"the case {self.settings.features}; use the same features or drop --resume")
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
                "skipped": dict(self.skipped), "time": time.time(), "state": state,
                "dropped": sum(m.get("dropped", 0) for m in self.members.values()),
                "consumer": self.settings.consumer,
                "features": self.settings.features,
                "members": {name: dict(self.members.get(name, {}),
                                       validation_loss=_finite(self.member_loss.get(name)),
                                       apriori=self.apriori.get(name))
                            for name in self.stream_names}}

    def write_status(self, record: dict) -> None:
        """The status key (overwritten) and one line of the history file."""
        text = json.dumps(record)
        self.client.set_string(keys.trainer_status(self.ns, self.settings.trainer), text)
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
        # on every server (co-located: every host) before the heartbeat says the trainer is up:
        # the launcher starts an ensemble's members once every trainer's heartbeat is up
        collectively(comm, trainer.join_streams)
        heartbeat = Heartbeat(Client.from_env, trainer.ns, trainer.settings.trainer).start()
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
