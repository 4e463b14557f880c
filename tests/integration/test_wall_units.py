"""Wall-unit features: one model for several Re_tau. `nekrs-ml train` reads three ensemble
members (Re_tau 550, 950, 1400, each in its own namespace with its case record) and its model,
in wall units, must extrapolate to Re_tau = 2000; a dimensional model of the same members cannot.
Also: the registry keeps a model name's features, and `nekrs-ml deploy --features`."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nekrs_ml
from nekrs_ml import keys
from nekrs_ml.errors import ConfigError, NekrsMLError
from nekrs_ml.launch.report import evaluate_samples
from nekrs_ml.models import features, registry
from support.ensembles import MemberSolver, member_case, wall_samples
from support.training import fresh_namespace, log_of, trainer_env, write_par

torch = pytest.importorskip("torch")
pytest.importorskip("mpi4py")

MEMBERS = {"re550": 550.0, "re950": 950.0, "re1400": 1400.0}
HELD_OUT_RE_TAU = 2000.0
WALL_OPTIONS = dict(features="wall_units", hiddenLayers="32, 32", learningRate=0.003,
                    batchSize=256, stepsPerEpoch=50, maxEpochs=40, publishInterval=10,
                    validationFraction=0.1, replayBuffer=20000)


def held_out(rng_seed: int = 7):
    """Samples of the held-out member, Re_tau = 2000 (h+ = 200: beyond every training member)."""
    inputs, targets = wall_samples(HELD_OUT_RE_TAU, 20000, np.random.default_rng(rng_seed))
    return inputs, targets, member_case(HELD_OUT_RE_TAU)


def run_trainer(par: str, run_dir: str, env: dict, streams: dict, consumer: str,
                timeout: float = 150.0) -> int:
    argv = ["mpiexec", "-n", "1", sys.executable, "-m", "nekrs_ml.cli", "train", par,
            "--run-dir", run_dir, "--data-timeout", "60", "--consumer", consumer]
    for name, ns in streams.items():
        argv += ["--stream", f"{name}={ns}"]
    with open(Path(run_dir, "trainer.log"), "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow  # a trainer under mpiexec
def test_wall_units_model_of_three_members_extrapolates_to_re_tau_2000(tcp_server, run_dir):
    client = nekrs_ml.Client(**tcp_server.client_args())
    run = fresh_namespace()
    streams = {name: f"{run}.{name}" for name in MEMBERS}
    solvers = [MemberSolver(tcp_server.client_args(), streams[name], re_tau, seed=i)
               for i, (name, re_tau) in enumerate(MEMBERS.items())]
    par = write_par(run_dir, modelName="wall_model", **WALL_OPTIONS)
    for solver in solvers:
        solver.start()
    try:
        started = time.monotonic()
        code = run_trainer(par, run_dir, trainer_env(tcp_server, run), streams, "wallnet")
        took = time.monotonic() - started
    finally:
        for solver in solvers:
            solver.halted.set()
            solver.join(timeout=10)
    assert code == 0, log_of(run_dir)
    assert all(s.error is None for s in solvers), [s.error for s in solvers]
    # a named trainer's control keys are its own
    assert not client.exists(keys.trainer_status(run))
    status = json.loads(client.get_string(keys.trainer_status(run, "wallnet")))
    assert status["state"] == "done" and status["features"] == "wall_units"
    assert status["consumer"] == "wallnet"
    assert set(status["members"]) == set(MEMBERS)
    for name, member in status["members"].items():
        assert member["snapshots"] > 0 and member["validation_loss"] is not None, (name, member)
        assert member["apriori"]["samples"] > 0 and member["apriori"]["median"] < 0.05, member
        assert member["dropped"] >= 0 and member["skipped"] == {}
    assert status["dropped"] == sum(m["dropped"] for m in status["members"].values())
    history = [json.loads(line) for line in
               Path(run_dir, "trainer_history.jsonl").read_text().splitlines()]
    assert set(history[-1]["members"]) == set(MEMBERS)

    _, meta = registry.load(client, run, "wall_model")
    assert meta["features"] == "wall_units" and (meta["n_in"], meta["n_out"]) == (3, 2)
    inputs, targets, case = held_out()
    result = evaluate_samples(client, run, "wall_model", inputs, targets, case)
    print(f"wall units, Re_tau = 2000 held out: median {result['median']:.4f}, p95 "
          f"{result['p95']:.4f} ({result['samples']} samples, v{result['version']}; trainer "
          f"{took:.0f} s); members: "
          + ", ".join(f"{n} {m['apriori']['median']:.4f}/{m['apriori']['p95']:.4f}"
                      for n, m in status["members"].items()))
    assert result["samples"] == len(inputs)
    assert result["median"] <= 0.02 and result["p95"] <= 0.05, result


@functools.lru_cache(maxsize=None)  # fitted once per scheme for the whole module
def offline_fit(wall_units: bool, steps: int = 800, seed: int = 0):
    """The trainer's network and feature map fitted to the three members in-process (no
    database): the deployable model and its relative errors at Re_tau = 2000."""
    from nekrs_ml.train.model import (DIRECTION_STD_FLOOR, build_mlp, deployable,
                                      wall_unit_input_features, wall_unit_target_features)

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    xs, ys = [], []
    for re_tau in MEMBERS.values():
        x, tau = wall_samples(re_tau, 5000, rng)
        case = member_case(re_tau)
        if wall_units:
            x = features.to_model_inputs(x, features.WALL_UNITS, case)
            tau = features.to_model_targets(tau, features.WALL_UNITS, case)
            x, tau = wall_unit_input_features(x), wall_unit_target_features(tau, x)
        xs.append(x)
        ys.append(tau)
    x, y = np.concatenate(xs), np.concatenate(ys)
    floor = DIRECTION_STD_FLOOR if wall_units else 1e-8
    x_mean, y_mean = x.mean(0), y.mean(0)
    x_std, y_std = np.maximum(x.std(0), floor), np.maximum(y.std(0), floor)
    if wall_units:  # the magnitude feature keeps its own scale
        x_std[0], y_std[0] = x.std(0)[0], y.std(0)[0]
    mlp = build_mlp(x.shape[1], (32, 32), y.shape[1])
    optimiser = torch.optim.Adam(mlp.parameters(), lr=3e-3)
    xn = torch.tensor((x - x_mean) / x_std, dtype=torch.float32)
    yn = torch.tensor((y - y_mean) / y_std, dtype=torch.float32)
    for _ in range(steps):
        rows = torch.randint(0, len(xn), (256,))
        loss = torch.nn.functional.mse_loss(mlp(xn[rows]), yn[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model = deployable(mlp, x_mean, x_std, y_mean, y_std, wall_units=wall_units)
    inputs, targets, case = held_out()
    scheme = features.WALL_UNITS if wall_units else features.DIMENSIONAL
    with torch.no_grad():
        answer = model(torch.tensor(features.to_model_inputs(inputs, scheme, case),
                                    dtype=torch.float32)).double().numpy()
    predicted = features.from_model_outputs(answer, scheme, case)
    errors = np.linalg.norm(predicted - targets, axis=1) / np.linalg.norm(targets, axis=1)
    return model, errors


def test_a_dimensional_model_of_the_same_members_is_visibly_worse():
    """The same network and budget: in the solver's units the map from velocity to stress
    depends on nu, which the model never sees, so no fit of the three members carries to a
    fourth; in wall units the law is one curve."""
    _, wall = offline_fit(True)
    _, dimensional = offline_fit(False)
    print(f"offline, Re_tau = 2000 held out: wall units median {np.median(wall):.4f} p95 "
          f"{np.percentile(wall, 95):.4f}; dimensional median {np.median(dimensional):.4f} "
          f"p95 {np.percentile(dimensional, 95):.4f}")
    assert np.median(wall) <= 0.02 and np.percentile(wall, 95) <= 0.05
    assert np.median(dimensional) > 5 * np.median(wall) and np.median(dimensional) > 0.05


def test_the_wall_units_model_exports_and_answers_finite_values_for_any_input():
    from nekrs_ml.train.model import export_program, program_bytes

    model, _ = offline_fit(True)
    program = export_program(model)
    probe = torch.tensor([[0.0, 0.0, 0.0], [-50.0, 50.0, 3.0], [1e4, 10.0, -5.0]])
    with torch.no_grad():
        exported = program.module()(probe)
        assert torch.isfinite(exported).all() and exported.shape == (3, 2)
        assert torch.allclose(exported, model(probe), rtol=1e-5)
    assert len(program_bytes(program)) > 0


def test_the_registry_refuses_to_change_a_models_features(server):
    client = nekrs_ml.Client(**server.client_args())
    ns = fresh_namespace()
    registry.publish(client, ns, "m", b"one", {"n_in": 3})  # no field: dimensional
    with pytest.raises(ConfigError, match=r"model 'm'.*features = dimensional.*wall_units.*"
                                          r"use another modelName"):
        registry.publish(client, ns, "m", b"two", {"features": "wall_units"})
    assert registry.latest_version(client, ns, "m") == 1
    assert registry.publish(client, ns, "m", b"two", {"features": "dimensional"}) == 2
    assert registry.publish(client, ns, "w", b"w", {"features": "wall_units"}) == 1
    assert features.features_of(registry.load(client, ns, "w")[1]) == "wall_units"


def test_deploy_features_option_is_stored_in_the_meta(tcp_server, run_dir):
    from nekrs_ml.train.model import export_program

    model, _ = offline_fit(True)
    path = Path(run_dir, "wall.pt2")
    torch.export.save(export_program(model), str(path))
    ns = fresh_namespace()
    env = trainer_env(tcp_server, ns)
    # a bare program: its first layer takes the 4 features, the model 3 inputs (--inputs)
    for name, option in (("plain", []), ("scaled", ["--features", "wall_units"])):
        done = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "deploy", str(path),
                               "--name", name, "--inputs", "3", *option], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    client = nekrs_ml.Client(**tcp_server.client_args())
    assert registry.load(client, ns, "plain")[1]["features"] == "dimensional"
    assert registry.load(client, ns, "scaled")[1]["features"] == "wall_units"
    refused = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "deploy", str(path),
                              "--name", "scaled", "--inputs", "3"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "use another modelName" in refused.stderr
    with pytest.raises(NekrsMLError, match="case record"):  # a wall-units model needs the case
        features.from_model_outputs(np.ones((1, 2)), features.WALL_UNITS, None)


@pytest.mark.slow  # an AOTInductor compilation (about a minute)
def test_the_wall_units_model_runs_in_the_worker_in_process_and_as_onnx(tcp_server):
    """The same answers from the exported program, a model worker, the in-process
    AOTInductor package and ONNX Runtime: the model needs nothing but wall-scaled inputs."""
    from nekrs_ml import _core
    from nekrs_ml.models import aot
    from nekrs_ml.train import onnx_export
    from nekrs_ml.train.model import Exporter, program_bytes
    from support.workers import Worker

    model, _ = offline_fit(True)
    inputs, _, case = held_out()
    x = np.ascontiguousarray(features.to_model_inputs(inputs[:500], features.WALL_UNITS, case),
                             dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    program = Exporter().program_for(model)
    ns = fresh_namespace()
    client = nekrs_ml.Client(**tcp_server.client_args())
    registry.publish(client, ns, "m", program_bytes(program),
                     {"n_in": 3, "n_out": 2, "format": "export", "features": "wall_units",
                      "graph": aot.graph_id(program, 3, 2)},
                     weights_blob=aot.weights_blob(program, 3, 2))
    aot.ensure_package(client, ns, "m")
    native = _core.Client(**tcp_server.client_args())
    out = np.empty((len(x), 2), np.float32)
    _core.InprocessBackend(native, ns).run("m", x, out)
    np.testing.assert_allclose(out, expected, rtol=1e-4)
    worker = Worker(tcp_server, ns)
    try:
        served = np.empty_like(out)
        _core.InferenceClient(native, ns, 0, 1, 30.0).run("m", x, served)
        np.testing.assert_allclose(served, expected, rtol=1e-4)
    finally:
        worker.stop()
    pytest.importorskip("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_export.onnx_bytes(model, 3),
                                           providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {onnx_export.INPUT: x})[0], expected, rtol=1e-4)


def test_snapshots_wait_for_their_streams_case_record(server):
    """A snapshot of a stream without a case record waits in memory (bounded, the oldest
    dropped and counted) until the record comes; a record that never comes fails, naming it."""
    from nekrs_ml.train.data import PendingCases, Snapshot, Stream

    client = nekrs_ml.Client(**server.client_args())
    run = fresh_namespace()
    streams = [Stream("re550", f"{run}.re550"), Stream("re950", f"{run}.re950")]
    client.set_string(keys.solver_case(streams[0].ns), json.dumps(member_case(550.0)))
    pending = PendingCases(streams, timeout=0.5, limit=3)

    def snapshot(stream: str, seq: int) -> Snapshot:
        return Snapshot(0, seq, seq, 0.0, np.ones((2, 3)), np.ones((2, 2)), stream)

    ready = pending.take(client, [snapshot("re550", 0)] + [snapshot("re950", i) for i in range(5)])
    assert [(s.stream, s.seq) for s in ready] == [("re550", 0)]
    assert pending.dropped == {"re950": 2} and len(pending.pending["re950"]) == 3
    client.set_string(keys.solver_case(streams[1].ns), json.dumps(member_case(950.0)))
    ready = pending.take(client, [snapshot("re950", 5)])
    assert [s.seq for s in ready] == [2, 3, 4, 5]
    assert pending.cases["re950"]["kinematic_viscosity"] == pytest.approx(1 / 950)
    late = PendingCases([Stream("late", f"{run}.late")], timeout=0.2)
    late.take(client, [snapshot("late", 0)])
    time.sleep(0.3)
    with pytest.raises(NekrsMLError, match=rf"'{run}.late:solver:case'.*features = dimensional"):
        late.take(client, [])
    client.set_string(keys.solver_case(f"{run}.bad"), json.dumps({"kinematic_viscosity": 0}))
    with pytest.raises(NekrsMLError, match=r"kinematic_viscosity = 0"):
        features.read_case(client, f"{run}.bad")


def test_the_report_scales_with_the_case_of_the_solver_namespace(tcp_server):
    """evaluate_model reads the held-out snapshot and the case record from the member's
    namespace and the model from the run's; evaluate_samples takes samples and a case."""
    from nekrs_ml.launch.report import evaluate_model
    from nekrs_ml.train.model import Exporter, program_bytes

    model, _ = offline_fit(True)
    client = nekrs_ml.Client(**tcp_server.client_args())
    run = fresh_namespace()
    member = f"{run}.re2000"
    program = Exporter().program_for(model)
    registry.publish(client, run, "wall_model", program_bytes(program),
                     {"n_in": 3, "n_out": 2, "format": "export", "features": "wall_units"})
    inputs, targets, case = held_out()
    client.put_tensor(keys.holdout_inputs(member, 0), inputs[:2000].astype(np.float32))
    client.put_tensor(keys.holdout_targets(member, 0), targets[:2000])
    with pytest.raises(ValueError, match=rf"'{member}:solver:case'"):
        evaluate_model(client, member, "wall_model", 1, model_ns=run)
    client.set_string(keys.solver_case(member), json.dumps(case))
    result = evaluate_model(client, member, "wall_model", 1, model_ns=run)
    assert result["samples"] == 2000 and result["median"] < 0.02 and result["version"] == 1
    assert result["predicted"].shape == (2000, 2)
    samples = evaluate_samples(client, run, "wall_model", inputs[:2000], targets[:2000], case)
    assert set(samples) == {"median", "p95", "samples", "version"}
    assert samples["median"] == pytest.approx(result["median"], rel=1e-3)
