"""Wall physics (Reichardt's law, the reproducer's synthetic sampler) and the solver-side
training stream of libnekrsml, through nekrs_ml._core."""

from __future__ import annotations

import math
import shutil
import threading
import time
import uuid

import numpy as np
import pytest

import nekrs_ml
from nekrs_ml import _core, keys
from nekrs_ml.errors import ConfigError
from nekrs_ml.launch.progress import stream_counts
from nekrs_ml.orchestrator import Orchestrator
from support.paths import short_tmpdir


NU = 1 / 19000  # the reference channel: Re_tau = 950 with u_tau = 0.05
H = 0.1


def uplus(yplus: float) -> float:
    """Reichardt's law, written out independently of the library."""
    kappa = 0.41
    return (math.log(1 + kappa * yplus) / kappa
            + 7.8 * (1 - math.exp(-yplus / 11) - yplus / 11 * math.exp(-yplus / 3)))


# --- Reichardt ------------------------------------------------------------------------------
@pytest.mark.parametrize("yplus", [0.0, 1e-3, 1.0, 5.0, 11.0, 30.0, 95.0, 300.0, 1e4])
def test_uplus_matches_the_formula(yplus):
    assert _core.reichardt_uplus(yplus) == pytest.approx(uplus(yplus), rel=1e-14, abs=1e-15)


def test_uplus_limits():
    assert _core.reichardt_uplus(1e-4) == pytest.approx(1e-4, rel=1e-3)  # viscous sublayer
    # log layer: u+ -> ln(y+)/kappa + B with B = 7.8 + ln(kappa)/kappa ~ 5.63
    assert _core.reichardt_uplus(1e5) - math.log(1e5) / 0.41 == pytest.approx(5.63, abs=0.01)


@pytest.mark.parametrize("u_tau", [1e-6, 1e-3, 0.01, 0.05, 0.3, 2.0, 50.0])
@pytest.mark.parametrize("h,nu", [(H, NU), (0.02, 1e-3), (1.0, 1e-6)])
def test_friction_velocity_round_trip(u_tau, h, nu):
    u = u_tau * uplus(h * u_tau / nu)
    assert _core.reichardt_friction_velocity(u, h, nu) == pytest.approx(u_tau, rel=1e-10)
    assert _core.reichardt_wall_shear_stress(u, h, nu) == pytest.approx(u_tau ** 2, rel=2e-10)


def test_reference_channel_point():
    u_tau = 0.05
    assert H * u_tau / NU == pytest.approx(95.0)
    u = u_tau * uplus(95.0)
    assert u == pytest.approx(0.8396, abs=1e-4)
    assert _core.reichardt_friction_velocity(u, H, NU) == pytest.approx(u_tau, rel=1e-12)
    assert _core.reichardt_wall_shear_stress(u, H, NU) == pytest.approx(0.0025, rel=1e-12)


def test_shear_stress_of_no_flow_is_zero():
    assert _core.reichardt_friction_velocity(0.0, H, NU) == 0.0
    assert _core.reichardt_wall_shear_stress(-1.0, H, NU) == 0.0


def test_shear_stress_arrays_keep_shape_and_dtype():
    u = np.linspace(0.0, 2.0, 12).reshape(3, 4)
    tau = _core.reichardt_wall_shear_stress(u, H, NU)
    assert tau.dtype == np.float64 and tau.shape == (3, 4)
    assert tau[1, 2] == _core.reichardt_wall_shear_stress(float(u[1, 2]), H, NU)
    tau32 = _core.reichardt_wall_shear_stress(u.astype(np.float32), H, NU)
    assert tau32.dtype == np.float32 and tau32.shape == (3, 4)
    np.testing.assert_allclose(tau32, tau, rtol=1e-6)
    strided = _core.reichardt_wall_shear_stress(u[:, ::2], H, NU)  # any layout is accepted
    np.testing.assert_array_equal(strided, tau[:, ::2])
    assert isinstance(_core.reichardt_wall_shear_stress(1, H, NU), float)


@pytest.mark.parametrize("h,nu", [(0.0, NU), (H, 0.0), (-1.0, NU), (H, float("nan"))])
def test_invalid_geometry_is_refused(h, nu):
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        _core.reichardt_wall_shear_stress(1.0, h, nu)


# --- the reproducer's sampler ---------------------------------------------------------------
def sample(steps: int, seed: int = 12345, rank: int = 0, points: int = 200,
           fluctuation: float = 0.1, correlation: float = 0.9, dtype=np.float64):
    """Velocities and shear stresses of `steps` steps: arrays [steps, points]."""
    sampler = _core.ChannelWallSampler(points, 950.0, NU, H, fluctuation, correlation, seed, rank)
    inputs = np.empty((points, 1), dtype)
    targets = np.empty((points, 1), dtype)
    u, tau = [], []
    for _ in range(steps):
        sampler.advance()
        sampler.fill(inputs, targets)
        u.append(inputs[:, 0].copy())
        tau.append(targets[:, 0].copy())
    return np.array(u), np.array(tau), sampler


def test_sampler_mean_is_the_channel_point():
    sampler = _core.ChannelWallSampler(10, 950.0, NU, H, 0.1, 0.9, 1, 0)
    assert sampler.friction_velocity == pytest.approx(0.05)
    assert sampler.mean_velocity == pytest.approx(0.05 * uplus(95.0), rel=1e-14)
    assert sampler.points == 10


def test_sampler_is_bit_identical_for_the_same_seed_and_rank():
    u1, tau1, _ = sample(20)
    u2, tau2, _ = sample(20)
    assert u1.tobytes() == u2.tobytes() and tau1.tobytes() == tau2.tobytes()
    assert not np.array_equal(u1, sample(20, seed=12346)[0])
    assert not np.array_equal(u1, sample(20, rank=1)[0])


def test_sampler_targets_are_the_reichardt_stress_of_the_inputs():
    u, tau, _ = sample(3, dtype=np.float64)
    np.testing.assert_array_equal(tau, _core.reichardt_wall_shear_stress(u, H, NU))
    u32, tau32, _ = sample(3, dtype=np.float32)
    np.testing.assert_array_equal(u32, u.astype(np.float32))
    np.testing.assert_allclose(tau32, tau, rtol=1e-6)


def test_sampler_varies_in_space_and_time():
    u, _, sampler = sample(2)
    assert np.all(u > 0)
    assert u[0].std() > 0.01 * sampler.mean_velocity
    assert np.abs(u[1] - u[0]).max() > 0


def test_sampler_statistics():
    fluctuation, correlation, steps = 0.1, 0.9, 400
    u, _, sampler = sample(steps, points=2000, fluctuation=fluctuation, correlation=correlation)
    sigma = fluctuation * sampler.mean_velocity
    # Far-apart times are independent, and the difference cancels the fixed spatial pattern.
    rms = np.std(u[-1] - u[0]) / math.sqrt(2)
    assert rms == pytest.approx(sigma, rel=0.05)
    # Lag-one autocorrelation per point, pooled (the bias of removing the mean is ~ 5/steps).
    d = u - u.mean(axis=0)
    lag1 = np.sum(d[1:] * d[:-1]) / np.sum(d * d)
    assert lag1 == pytest.approx(correlation, abs=0.03)


def test_sampler_fill_checks_the_arrays():
    sampler = _core.ChannelWallSampler(4, 950.0, NU, H, 0.1, 0.9, 1, 0)
    good = np.zeros((4, 1))
    for inputs, targets in [(np.zeros((4,)), np.zeros((4,))),
                            (np.zeros((5, 1)), np.zeros((5, 1))),
                            (good, np.zeros((4, 1), np.float32)),
                            (np.zeros((4, 1), np.int32), np.zeros((4, 1), np.int32)),
                            (np.zeros((4, 2))[:, :1], good)]:
        with pytest.raises(ConfigError, match="inputs"):
            sampler.fill(inputs, targets)
    readonly = np.zeros((4, 1))
    readonly.flags.writeable = False
    with pytest.raises(ConfigError, match="writeable"):
        sampler.fill(readonly, good)


@pytest.mark.parametrize("args,match", [
    (dict(re_tau=0.0), "reTau"), (dict(fluctuation=-0.1), "fluctuation"),
    (dict(correlation=1.5), "correlation"), (dict(h=0.0), "sampleHeight")])
def test_sampler_refuses_invalid_parameters(args, match):
    params = dict(points=4, re_tau=950.0, nu=NU, h=H, fluctuation=0.1, correlation=0.9, seed=1,
                  rank=0)
    params.update(args)
    with pytest.raises(ConfigError, match=match):
        _core.ChannelWallSampler(**params)


# --- the training stream --------------------------------------------------------------------
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


def snapshot(n: int = 8, n_in: int = 1, n_out: int = 1, value: float = 0.0, dtype=np.float32):
    inputs = (np.arange(n * n_in, dtype=dtype).reshape(n, n_in) + value)
    targets = (np.arange(n * n_out, dtype=dtype).reshape(n, n_out) * 2 + value)
    return inputs, targets


def index(client, ns: str, rank: int):
    """The announcements as (seq, step, time)."""
    entries = [e.decode().split() for e in client.list_range(keys.snapshot_index(ns, rank))]
    return [(int(seq), int(step), float(t)) for seq, step, t in entries]


@pytest.fixture
def clients(server):
    """(C++ client for the stream, Python client to check what the server holds)."""
    native = _core.Client(**server.client_args())
    python = nekrs_ml.Client(**server.client_args())
    try:
        yield native, python
    finally:
        native.close()
        python.close()


def test_stream_stores_then_announces(clients):
    native, python = clients
    ns, rank = namespace(), 3
    stream = _core.TrainingStream(native, ns, rank, sample_interval=1, max_snapshots=100)
    assert python.command(["SISMEMBER", keys.solver_members(ns), str(rank)],
                          keys.solver_members(ns)) == 1
    times = [0.1 * step + 1e-17 for step in range(5)]
    for step, t in enumerate(times):
        inputs, targets = snapshot(n=16, n_in=2, n_out=1, value=step)
        result = stream.put(step * 10, t, inputs, targets)
        assert result["written"] and not result["dropped"] and not result["warning"]
        assert result["dropped_oldest"] == 0 and result["seconds"] >= 0
        stored_inputs = python.get_tensor(keys.snapshot_inputs(ns, rank, step))
        stored_targets = python.get_tensor(keys.snapshot_targets(ns, rank, step))
        np.testing.assert_array_equal(stored_inputs, inputs)
        np.testing.assert_array_equal(stored_targets, targets)
    assert index(python, ns, rank) == [(seq, seq * 10, t) for seq, t in enumerate(times)]
    assert stream.snapshots_written == 5 and stream.next_seq == 5 and stream.snapshots_dropped == 0
    # the rank's progress counter, counted in the snapshot's transaction (one shard)
    assert python.get_string(keys.snapshot_announced(ns, rank)) == b"5"
    assert stream_counts(python, ns, range(rank + 2)) == (5, 0)


def test_a_reader_never_sees_an_announcement_before_the_data(clients, server):
    native, python = clients
    ns, rank, count = namespace(), 0, 60
    stream = _core.TrainingStream(native, ns, rank, sample_interval=1, max_snapshots=count)
    missing, seen = [], set()
    done = threading.Event()

    def reader():
        with nekrs_ml.Client(**server.client_args()) as client:
            while not done.is_set() or len(seen) < count:
                for seq, _, _ in index(client, ns, rank):
                    if seq not in seen:
                        seen.add(seq)
                        for key in (keys.snapshot_inputs(ns, rank, seq),
                                    keys.snapshot_targets(ns, rank, seq)):
                            if not client.exists(key):
                                missing.append(key)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        inputs, targets = snapshot(n=20000, n_in=3)
        for step in range(count):
            stream.put(step, step * 0.01, inputs, targets)
    finally:
        done.set()
        thread.join(timeout=30)
    assert not missing and seen == set(range(count))


def test_stream_due_and_control_keys(tcp_server):
    with _core.Client(**tcp_server.client_args()) as client:
        ns = namespace()
        stream = _core.TrainingStream(client, ns, 0, sample_interval=3)
        assert [step for step in range(10) if stream.due(step)] == [0, 3, 6, 9]
        assert not _core.TrainingStream.stop_requested(client, ns)
        client.set_string(keys.trainer_stop(ns), "converged")
        assert _core.TrainingStream.stop_requested(client, ns)
        _core.TrainingStream.mark_done(client, ns)
        assert client.exists(keys.solver_done(ns))


def test_retention_drop_keeps_max_snapshots(clients):
    native, python = clients
    ns, rank = namespace(), 1
    stream = _core.TrainingStream(native, ns, rank, sample_interval=1, max_snapshots=3)
    results = [stream.put(step, float(step), *snapshot(value=step)) for step in range(7)]
    assert [r["dropped_oldest"] for r in results] == [0, 0, 0, 1, 1, 1, 1]
    assert all(r["written"] and not r["warning"] for r in results)  # routine: no warning
    assert [seq for seq, _, _ in index(python, ns, rank)] == [4, 5, 6]
    for seq in range(7):
        assert python.exists(keys.snapshot_inputs(ns, rank, seq)) == (seq >= 4)
        assert python.exists(keys.snapshot_targets(ns, rank, seq)) == (seq >= 4)
    assert stream.snapshots_dropped == 4 and stream.snapshots_written == 7
    assert python.get_string(keys.snapshot_dropped(ns, rank)) == b"4"


def test_retention_wait_times_out_then_drops_with_a_warning(clients):
    native, python = clients
    ns = namespace()
    stream = _core.TrainingStream(native, ns, 0, sample_interval=1, max_snapshots=2,
                                  when_full="wait", wait_timeout=0.2)
    for step in range(2):
        assert not stream.put(step, 0.0, *snapshot())["waited"]
    result = stream.put(2, 0.0, *snapshot())
    assert result["written"] and result["waited"] and result["dropped_oldest"] == 1
    assert result["seconds"] >= 0.2
    assert "waitTimeout" in result["warning"] and "maxSnapshots" in result["warning"]
    assert [seq for seq, _, _ in index(python, ns, 0)] == [1, 2]
    assert not python.exists(keys.snapshot_inputs(ns, 0, 0))


def test_retention_wait_resumes_when_the_trainer_consumes(clients):
    native, python = clients
    ns = namespace()
    stream = _core.TrainingStream(native, ns, 0, sample_interval=1, max_snapshots=1,
                                  when_full="wait", wait_timeout=30.0)
    stream.put(0, 0.0, *snapshot())
    index_key = keys.snapshot_index(ns, 0)
    consumer = threading.Timer(0.2, lambda: python.command(["LPOP", index_key], index_key))
    consumer.start()
    try:
        result = stream.put(1, 0.0, *snapshot())
    finally:
        consumer.join()
    assert result["written"] and result["waited"] and result["dropped_oldest"] == 0
    assert not result["warning"] and 0.15 < result["seconds"] < 10
    assert [seq for seq, _, _ in index(python, ns, 0)] == [1]


def test_retention_wait_does_not_wait_for_a_trainer_that_is_gone(clients):
    """whenFull = wait with no live trainer (no heartbeat): one whole wait while a trainer may
    still be starting, then drops at once; a trainer whose heartbeat expires mid-wait (it died)
    ends the wait within about a second."""
    native, python = clients
    ns = namespace()
    stream = _core.TrainingStream(native, ns, 0, sample_interval=1, max_snapshots=1,
                                  when_full="wait", wait_timeout=1.5)
    stream.put(0, 0.0, *snapshot())
    first = stream.put(1, 0.0, *snapshot())  # no trainer yet: it may be starting
    assert first["waited"] and first["seconds"] >= 1.5 and first["written"]
    second = stream.put(2, 0.0, *snapshot())  # a whole wait passed without one: no more waits
    assert second["written"] and second["dropped_oldest"] == 1 and second["seconds"] < 1.0
    assert "no trainer is running" in second["warning"]
    assert keys.trainer_alive(ns) in second["warning"]

    dead = namespace()
    stream = _core.TrainingStream(native, dead, 0, sample_interval=1, max_snapshots=1,
                                  when_full="wait", wait_timeout=30.0)
    stream.put(0, 0.0, *snapshot())
    alive = keys.trainer_alive(dead)
    python.command(["SET", alive, "1", "PX", "300"], key=alive)  # a trainer that stops beating
    result = stream.put(1, 0.0, *snapshot())
    assert result["written"] and result["waited"] and result["dropped_oldest"] == 1
    assert result["seconds"] < 5.0 and "no trainer is running" in result["warning"]
    later = stream.put(2, 0.0, *snapshot())
    assert later["seconds"] < 1.0 and not later["waited"]


def test_put_checks_shapes_and_dtypes(tcp_server):
    with _core.Client(**tcp_server.client_args()) as client:
        stream = _core.TrainingStream(client, namespace(), 0)
        inputs, targets = snapshot(n=8)
        for bad_inputs, bad_targets, match in [
                (inputs, snapshot(n=9)[1],
                 r"same number of points.*float32\[8, 1\].*float32\[9, 1\]"),
                (inputs, targets.astype(np.float64), "both be float32 or both float64"),
                (inputs.ravel(), targets, r"\[n, n_in\]"),
                (inputs.astype(np.int32), targets, "use float32 or float64"),
                (np.zeros((8, 2), np.float32)[:, :1], targets, "C-contiguous")]:
            with pytest.raises(ConfigError, match=match):
                stream.put(0, 0.0, bad_inputs, bad_targets)
        assert stream.next_seq == 0


@pytest.mark.parametrize("args,match", [
    (dict(sample_interval=0), "sampleInterval"), (dict(max_snapshots=0), "maxSnapshots"),
    (dict(when_full="later"), "use drop or wait"), (dict(namespace="a:b"), "namespace"),
    (dict(rank=-1), "rank")])
def test_stream_refuses_invalid_options(tcp_server, args, match):
    with _core.Client(**tcp_server.client_args()) as client:
        with pytest.raises(ConfigError, match=match):
            _core.TrainingStream(client, **args)


@pytest.fixture
def full_server():
    """A dedicated server (its maxmemory is changed), always stopped."""
    run_dir = short_tmpdir("nkml-full-")
    orchestrator = Orchestrator(run_dir, mode="single", maxmemory="64mb")
    try:
        orchestrator.start()
        yield dict(addresses=orchestrator.addresses, password=orchestrator.password)
    finally:
        orchestrator.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize("when_full", ["drop", "wait"])
def test_full_database_drops_without_raising_or_leaving_partial_keys(full_server, when_full):
    ns = namespace()
    with _core.Client(**full_server) as client:
        stream = _core.TrainingStream(client, ns, 0, sample_interval=1, max_snapshots=10,
                                      when_full=when_full, wait_timeout=0.2)
        for step in range(2):
            assert stream.put(step, 0.0, *snapshot(n=1000))["written"]
        client.command(["CONFIG", "SET", "maxmemory", "1"])
        try:
            started = time.monotonic()
            result = stream.put(2, 0.0, *snapshot(n=1000))
            elapsed = time.monotonic() - started
        finally:
            client.command(["CONFIG", "SET", "maxmemory", "64mb"])
        assert not result["written"] and result["dropped"]
        assert "database is full" in result["warning"]
        assert not client.exists(keys.snapshot_inputs(ns, 0, 2))
        assert not client.exists(keys.snapshot_targets(ns, 0, 2))
        if when_full == "drop":  # freed its older snapshots first, in vain
            assert result["dropped_oldest"] == 2 and not result["waited"]
            assert client.list_length(keys.snapshot_index(ns, 0)) == 0
            assert stream.snapshots_dropped == 3
        else:  # waited for the trainer, then gave this one up
            assert result["waited"] and result["dropped_oldest"] == 0 and elapsed >= 0.2
            assert client.list_length(keys.snapshot_index(ns, 0)) == 2
            assert stream.snapshots_dropped == 1
        # With memory again, the stream goes on where it stopped.
        assert stream.put(3, 0.0, *snapshot(n=1000))["written"]
        assert index(client, ns, 0)[-1][:2] == (2, 3)
        # the refused snapshot was not counted as announced
        assert client.command(["GET", keys.snapshot_announced(ns, 0)]) == b"3"
