"""The coupling driver (C++ nekrs_ml::Coupling through _core) on the stand-in's channel wall,
against a real redis-server and real model workers: cadence, snapshots, the stop request, the
run summary, and the inference fallback (NaN predictions, a model that raises on real inputs,
a killed worker, a paused server, onInferenceError = abort, maxInferenceFailures)."""

import json
import math
import uuid

import numpy as np
import pytest
import torch

from nekrs_ml import _core, keys
from nekrs_ml.models import registry
from nekrs_ml.client import Client
from nekrs_ml.errors import NekrsMLError
from support.workers import Worker, scripted


H, NU, RE_TAU = 0.1, 1 / 19000, 950.0


def single_rank():
    return _core.CallbackCollective(0, 1, True, lambda values: values, lambda: None)


def channel(points=64, seed=3):
    return _core.SyntheticChannelField(points, RE_TAU, NU, H, 0.1, 0.9, seed, 0)


@pytest.fixture
def coupled(tcp_server, tmp_path, monkeypatch):
    """make(workflow, **nekrs_ml keys) -> (coupling, field); the namespace is new per test."""
    ns = f"c{uuid.uuid4().hex[:8]}"
    for name, value in tcp_server.info["env"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NEKRS_ML_NAMESPACE", ns)
    client = Client(**tcp_server.client_args())

    def make(workflow, points=64, **options):
        settings = {"workflow": workflow, "sampleInterval": 5, "sampleHeight": H,
                    "inferenceTimeout": 1, "timeout": 5, "maxSnapshots": 100, **options}
        par = tmp_path / f"{uuid.uuid4().hex[:6]}.par"
        par.write_text("[NEKRS_ML]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        field = channel(points)
        return _core.Coupling(str(par), single_rank(), field), field

    make.ns, make.client, make.server, make.tmp_path = ns, client, tcp_server, tmp_path
    try:
        yield make
    finally:
        client.close()


def drive(coupling, field, steps, last=None):
    """Steps 0..steps like a solver: advance, then hand the step over; stops at end_step."""
    coupling.step(0, 0.0, False)
    for step in range(1, steps + 1):
        field.advance()
        end = field.end_step
        coupling.step(step, step * 1e-3, step == (end if end >= 0 else last))
        if coupling.finished:
            return step
    return steps


def wall_law(field):
    """The fallback: Reichardt's stress along the tangential sample velocity (= the stand-in's
    resolved stress, which is Reichardt's by construction)."""
    return field.targets()


def publish(client, ns, module, tmp_path, name="wall_model"):
    blob = scripted(module, tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.pt")
    return registry.publish(client, ns, name, blob, {"n_in": 3, "n_out": 2, "dtype": "float32"})


class Scale(torch.nn.Module):
    """tau = a * [u.t1, u.t2]: a vector model whose answer is known exactly."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x[:, :2]


class Magnitude(torch.nn.Module):
    """|tau| only ([n, 1]): applied along the tangential sample velocity."""

    def forward(self, x):
        return 1e-3 * torch.ones_like(x[:, :1])


class NaNs(torch.nn.Module):
    def forward(self, x):
        return x[:, :2] * float("nan")


class RaisesOnLargeInputs(torch.nn.Module):
    """Fine on a zero probe, raises on the velocities of a real channel."""

    def forward(self, x):
        if bool((x.abs() > 1.0).any()):
            raise RuntimeError("input out of the trained range")
        return x[:, :2]


def summary_of(make, coupling):
    text = coupling.finish(-1)
    stored = make.client.get_string(keys.solver_summary(make.ns))
    assert stored.decode() == text
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))


# --- the stand-in's wall ------------------------------------------------------------------------
def test_synthetic_channel_has_both_walls_with_mirrored_frames():
    field = channel(400)
    field.advance()
    inputs, targets = field.inputs(), field.targets()
    assert inputs.shape == (400, 3) and targets.shape == (400, 2)
    lower, upper = inputs[0::2], inputs[1::2]
    assert (lower[:, 0] > 0).all() and (upper[:, 0] < 0).all()  # t1 = +x below, -x above
    assert abs(inputs[:, 1].mean()) < 0.1 * abs(inputs[:, 0]).mean()  # spanwise: fluctuation only
    speed = np.hypot(inputs[:, 0], inputs[:, 1])
    magnitude = _core.reichardt_wall_shear_stress(speed, H, NU)
    np.testing.assert_allclose(np.hypot(targets[:, 0], targets[:, 1]), magnitude, rtol=1e-12)
    np.testing.assert_allclose(targets * speed[:, None], inputs[:, :2] * magnitude[:, None],
                               rtol=1e-10, atol=1e-14)  # along the tangential velocity
    # same seed, same data; another rank, other data
    again = channel(400)
    again.advance()
    np.testing.assert_array_equal(again.inputs(), inputs)
    other = _core.SyntheticChannelField(400, RE_TAU, NU, H, 0.1, 0.9, 3, 1)
    other.advance()
    assert not np.array_equal(other.inputs(), inputs)


# --- training ---------------------------------------------------------------------------------
def test_snapshots_every_sample_interval_with_3_inputs_and_2_targets(coupled):
    coupling, field = coupled("train", sampleInterval=5)
    sent = {}
    coupling.step(0, 0.0, False)
    for step in range(1, 21):
        field.advance()
        if step % 5 == 0:
            sent[step] = (field.inputs().astype(np.float32), field.targets().astype(np.float32))
        coupling.step(step, step * 1e-3, step == 20)
    assert coupling.finished
    index = make_index(coupled)
    assert [step for _, step in index] == [5, 10, 15, 20]
    for seq, step in index:
        x = coupled.client.get_tensor(keys.snapshot_inputs(coupled.ns, 0, seq))
        y = coupled.client.get_tensor(keys.snapshot_targets(coupled.ns, 0, seq))
        assert x.dtype == np.float32 and x.shape == (64, 3) and y.shape == (64, 2)
        np.testing.assert_array_equal(x, sent[step][0])
        np.testing.assert_array_equal(y, sent[step][1])
    summary = json.loads(coupled.client.get_string(keys.solver_summary(coupled.ns)))
    assert summary["snapshots_written"] == 4 and summary["steps"] == 20
    assert summary["inference"] is None and summary["ended_early"] is None
    assert coupled.client.exists(keys.solver_done(coupled.ns))
    # the held-out snapshot of the last step, never announced
    held_out = coupled.client.get_tensor(keys.holdout_targets(coupled.ns, 0))
    np.testing.assert_array_equal(held_out, sent[20][1])


@pytest.mark.parametrize("window, first", [({"sampleStart": 12}, 15),
                                            ({"sampleStartTime": 0.0175}, 20),
                                            ({"sampleStart": 12, "sampleStartTime": 0.0175}, 20)])
def test_snapshots_before_the_sampling_window_are_never_streamed(coupled, window, first):
    """sampleStart (a step) and sampleStartTime (the solver's time, here step * 1e-3): only the
    multiples of sampleInterval inside the window are streamed, and the summary says which."""
    coupling, field = coupled("train", sampleInterval=5, **window)
    drive(coupling, field, 30, last=30)
    assert coupling.finished
    expected = list(range(first, 31, 5))
    assert [step for _, step in make_index(coupled)] == expected
    summary = summary_of(coupled, coupling)
    assert summary["snapshots_written"] == len(expected)
    sampled = summary["sample_window"]
    assert (sampled["first_step"], sampled["last_step"]) == (first, 30)
    assert sampled["first_time"] == pytest.approx(first * 1e-3)
    assert sampled["last_time"] == pytest.approx(0.03)
    assert sampled["sample_start"] == window.get("sampleStart", 0)
    assert sampled["sample_start_time"] == window.get("sampleStartTime", 0)


def test_a_window_the_run_never_reaches_streams_nothing(coupled):
    coupling, field = coupled("train", sampleInterval=5, sampleStart=100)
    drive(coupling, field, 20, last=20)
    assert make_index(coupled) == []
    summary = summary_of(coupled, coupling)
    assert summary["snapshots_written"] == 0
    assert summary["sample_window"]["first_step"] is None
    assert summary["sample_window"]["last_step"] is None


def make_index(make):
    """(seq, step) of the announced snapshots of rank 0."""
    raw = make.client.list_range(keys.snapshot_index(make.ns, 0))
    entries = [item.decode().split() for item in raw]
    return [(int(seq), int(step)) for seq, step, *_ in entries]


def test_the_trainers_stop_request_ends_the_run_at_the_next_step(coupled):
    coupling, field = coupled("train", sampleInterval=5)
    coupling.step(0, 0.0, False)
    for step in range(1, 4):
        field.advance()
        coupling.step(step, 0.0, False)
    coupled.client.set_string(keys.trainer_stop(coupled.ns), "converged")
    last = drive_from(coupling, field, 4, 50)
    assert field.end_step == 6 and coupling.end_reason == "trainer" and last == 6
    assert json.loads(coupled.client.get_string(keys.solver_summary(coupled.ns)))[
        "stopped_by_trainer"] is True


def drive_from(coupling, field, first, last):
    for step in range(first, last + 1):
        field.advance()
        end = field.end_step
        coupling.step(step, 0.0, step == (end if end >= 0 else last))
        if coupling.finished:
            return step
    return last


# --- inference ----------------------------------------------------------------------------------
def test_vector_and_magnitude_predictions_are_applied(coupled, tmp_path):
    publish(coupled.client, coupled.ns, Scale(1e-4), tmp_path)
    worker = Worker(coupled.server, coupled.ns)
    try:
        coupling, field = coupled("infer")
        coupling.step(0, 0.0, False)
        expected = 1e-4 * field.inputs()[:, :2].astype(np.float32)
        np.testing.assert_allclose(field.applied_stress, expected, rtol=1e-6)
        publish(coupled.client, coupled.ns, Magnitude(), tmp_path)  # v2: |tau| only
        for step in range(1, 200):
            field.advance()
            coupling.step(step, 0.0, False)
            if coupling.model_version == 2:
                break
        assert coupling.model_version == 2
        inputs = field.inputs()
        direction = inputs[:, :2] / np.hypot(inputs[:, 0], inputs[:, 1])[:, None]
        np.testing.assert_allclose(field.applied_stress, 1e-3 * direction, rtol=1e-6)
        summary = summary_of(coupled, coupling)
    finally:
        worker.stop()
    assert summary["inference"]["fallbacks"] == 0
    assert summary["inference"]["versions"] == [1, 2]


@pytest.mark.parametrize("module, cause", [(NaNs(), "not_finite"),
                                           (RaisesOnLargeInputs(), "model_error")])
def test_a_bad_model_leaves_the_run_on_the_fallback_wall_law(coupled, tmp_path, module, cause):
    publish(coupled.client, coupled.ns, module, tmp_path)
    worker = Worker(coupled.server, coupled.ns)
    try:
        coupling, field = coupled("infer", maxInferenceFailures=1000)
        coupling.step(0, 0.0, False)
        for step in range(1, 11):
            field.advance()
            coupling.step(step, 0.0, False)
            applied = field.applied_stress
            assert np.isfinite(applied).all()
            np.testing.assert_allclose(applied, wall_law(field), rtol=1e-12)
        summary = summary_of(coupled, coupling)
    finally:
        worker.stop()
    inference = summary["inference"]
    assert inference["calls"] == 11 and inference["fallbacks"] == 11
    assert inference["failures"][cause] == 11
    assert sum(inference["failures"].values()) == 11
    assert summary["ended_early"] is None


def test_too_many_failures_end_the_run_cleanly(coupled, tmp_path):
    publish(coupled.client, coupled.ns, NaNs(), tmp_path)
    worker = Worker(coupled.server, coupled.ns)
    try:
        coupling, field = coupled("infer", maxInferenceFailures=3, sampleInterval=5)
        last = drive(coupling, field, 100, last=100)
        summary = json.loads(coupled.client.get_string(keys.solver_summary(coupled.ns)))
    finally:
        worker.stop()
    assert last == 6 and coupling.end_reason == "inference_failures"
    assert summary["ended_early"] == "inference_failures" and summary["end_step"] == 6
    assert coupled.client.exists(keys.solver_done(coupled.ns))


def test_a_killed_worker_and_a_paused_server_fall_back_then_recover(coupled, tmp_path):
    publish(coupled.client, coupled.ns, Scale(1e-4), tmp_path)
    worker = Worker(coupled.server, coupled.ns)
    coupling, field = coupled("infer", maxInferenceFailures=1000, inferenceTimeout=1, timeout=1)
    try:
        coupling.step(0, 0.0, False)
        assert coupling.fallback_steps == 0
        worker.process.kill()
        worker.process.wait()
        for step in range(1, 4):
            field.advance()
            coupling.step(step, 0.0, False)
            np.testing.assert_allclose(field.applied_stress, wall_law(field), rtol=1e-12)
        assert coupling.fallback_steps == 3
        # a new worker: the next call uses the model again
        worker = Worker(coupled.server, coupled.ns)
        field.advance()
        coupling.step(4, 0.0, False)
        np.testing.assert_allclose(field.applied_stress, 1e-4 * field.inputs()[:, :2], rtol=1e-6)
        # a paused server: the call times out, the step falls back, the run goes on
        coupled.client.command(["CLIENT", "PAUSE", "2500", "ALL"])
        field.advance()
        coupling.step(5, 0.0, False)
        assert np.isfinite(field.applied_stress).all()
        assert coupling.fallback_steps == 4
        coupled.client.command(["PING"])  # answered once the pause is over: the end of the run needs the server
        summary = summary_of(coupled, coupling)
    finally:
        worker.stop()
    failures = summary["inference"]["failures"]
    assert failures["worker_unavailable"] + failures["timeout"] == 4


def test_on_inference_error_abort_raises(coupled, tmp_path):
    publish(coupled.client, coupled.ns, NaNs(), tmp_path)
    worker = Worker(coupled.server, coupled.ns)
    try:
        coupling, _ = coupled("infer", onInferenceError="abort")
        with pytest.raises(NekrsMLError, match="not_finite.*onInferenceError = abort"):
            coupling.step(0, 0.0, False)
    finally:
        worker.stop()


def test_train_infer_waits_for_the_first_version_on_the_wall_law(coupled):
    coupling, field = coupled("train+infer", workers=1)
    drive(coupling, field, 5, last=5)
    summary = json.loads(coupled.client.get_string(keys.solver_summary(coupled.ns)))
    inference = summary["inference"]
    # no worker runs and no model exists: the solver goes on with the wall law, no failure
    assert inference["waiting_calls"] + inference["fallbacks"] == 6
    assert math.isclose(np.abs(field.applied_stress - wall_law(field)).max(), 0.0, abs_tol=1e-15)


# --- automatic start of the sampling window (sampleStartTolerance) -------------------------------
class DevelopingWall(_core.WallFields):
    """A wall written in Python: n points whose wall shear stress follows tau(step) along t1 on
    every point (its mean is known exactly at each step)."""

    def __init__(self, tau, points=16):
        super().__init__()
        self.tau, self.points, self.step = tau, points, 0

    def advance(self):
        self.step += 1

    def wall_points(self):
        return self.points

    def sample_inputs(self, out):
        out[:] = [1.0, 0.0, 0.0]

    def wall_targets(self, out):
        out[:, 0] = self.tau(self.step)
        out[:, 1] = 0.0

    def apply_wall_stress(self, tau):
        pass

    def kinematic_viscosity(self):
        return NU

    def end_run_at(self, step):
        pass


def run_developing(coupled, tau, steps, **options):
    ns = coupled.ns
    settings = {"workflow": "train", "sampleInterval": 5, "sampleHeight": H, "timeout": 5,
                "maxSnapshots": 1000, **options}
    par = coupled.tmp_path / f"{uuid.uuid4().hex[:6]}.par"
    par.write_text("[NEKRS_ML]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    wall = DevelopingWall(tau)
    coupling = _core.Coupling(str(par), single_rank(), wall)
    coupling.step(0, 0.0, False)
    for step in range(1, steps + 1):
        wall.advance()
        coupling.step(step, step * 1e-3, step == steps)
    assert coupling.finished
    summary = json.loads(coupled.client.get_string(keys.solver_summary(ns)))
    return [step for _, step in make_index(coupled)], summary


def test_the_window_opens_once_the_wall_stress_is_steady(coupled):
    """tau relaxes to 1e-3 as 1 - 0.5 exp(-step / 40): with a 1 % tolerance over 10 checks the
    window opens at the first check whose halves (5 checks = 25 steps each) differ by <= 1 %."""
    def tau(step):
        return 1e-3 * (1 - 0.5 * np.exp(-step / 40.0))

    streamed, summary = run_developing(coupled, tau, 400, sampleStartTolerance=0.01,
                                       sampleStartChecks=10)
    checks = list(range(5, 401, 5))
    history, opened = [], None
    for step in checks:  # the rule, replayed
        history = (history + [tau(step)])[-10:]
        if len(history) == 10:
            older, newer = np.mean(history[:5]), np.mean(history[5:])
            if abs(newer - older) / newer <= 0.01:
                opened = step
                break
    assert opened is not None and 100 < opened < 400
    assert streamed == list(range(opened, 401, 5))
    steady = summary["sample_window"]["steady_start"]
    assert steady["opened_step"] == opened and steady["opened_time"] == pytest.approx(opened * 1e-3)
    assert steady["tolerance"] == 0.01 and steady["checks"] == 10
    assert 0 <= steady["last_relative_change"] <= 0.01
    assert summary["sample_window"]["first_step"] == opened


def test_a_wall_stress_that_never_settles_streams_nothing(coupled):
    streamed, summary = run_developing(coupled, lambda step: 1e-3 * (1 + step / 10.0), 200,
                                       sampleStartTolerance=0.01, sampleStartChecks=10)
    assert streamed == []
    steady = summary["sample_window"]["steady_start"]
    assert steady["opened_step"] is None and steady["last_relative_change"] > 0.01
    assert summary["snapshots_written"] == 0


def test_the_steadiness_check_starts_after_sample_start(coupled):
    """A steady wall: the window opens at the first possible check after sampleStart, once
    sampleStartChecks checks are in."""
    streamed, summary = run_developing(coupled, lambda step: 2e-3, 200, sampleStart=50,
                                       sampleStartTolerance=0.05, sampleStartChecks=4)
    assert streamed == list(range(65, 201, 5))  # checks at 50, 55, 60, 65
    assert summary["sample_window"]["steady_start"]["opened_step"] == 65
