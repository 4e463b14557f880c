"""The solver's side of shared models (docs/protocol.md, "Model features" and the model
namespace): a wall-units model (meta features = wall_units) gets the inputs scaled by h/nu and
its stress scaled back by nu^2/h^2 in the coupling, so it applies the same stress as its
dimensional twin; a solver with NEKRS_ML_MODEL_NAMESPACE takes its predictions from the workers
and registry of that namespace while every key it writes stays in its own; the solver's case
(nu, h) is stored for the trainer. Real redis-server, real `nekrs-ml serve` workers."""

import json
import uuid

import numpy as np
import pytest
import torch

from nekrs_ml import _core, keys
from nekrs_ml.client import Client
from nekrs_ml.errors import ConfigError, NekrsMLError
from nekrs_ml.inference import InferenceClient
from nekrs_ml.models import registry
from support.workers import Worker, scripted

H, NU, RE_TAU = 0.1, 1 / 19000, 950.0
A = 1e-4  # the dimensional model: tau = A * [u.t1, u.t2]


class Linear(torch.nn.Module):
    """tau = factor * [u.t1, u.t2]: a model whose answer is known exactly."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x[:, :2]


def single_rank():
    return _core.CallbackCollective(0, 1, True, lambda values: values, lambda: None)


def channel(points=64, seed=3):
    return _core.SyntheticChannelField(points, RE_TAU, NU, H, 0.1, 0.9, seed, 0)


@pytest.fixture(scope="module")
def served(tcp_server, tmp_path_factory):
    """One worker serving, in its own (model) namespace: `dimensional` (tau = A u), `plus` (the
    same model in wall units: tau+ = A h/nu u+), `nested` (dimensional, with a "features" field
    only inside a nested object of its meta) and `outer` (a scheme no solver knows)."""
    ns = f"m{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("models")
    base = {"n_in": 3, "n_out": 2, "dtype": "float32"}
    with Client(**tcp_server.client_args()) as client:
        for name, factor, meta in (
                ("dimensional", A, {}),
                ("plus", A * H / NU, {"features": "wall_units"}),
                ("nested", A, {"origin": {"features": "wall_units"}, "features_note": "x"}),
                ("outer", A, {})):
            blob = scripted(Linear(factor), tmp / f"{name}.pt")
            version = registry.publish(client, ns, name, blob, {**base, **meta})
        # a scheme this release does not know (a record of a newer one): the registry refuses
        # to publish it, so it is written over the stored meta
        meta_key = keys.model_meta(ns, "outer", version)
        record = json.loads(client.get_string(meta_key))
        client.set_string(meta_key, json.dumps({**record, "features": "outer_units"}))
    worker = Worker(tcp_server, ns)
    try:
        yield ns
    finally:
        worker.stop()


@pytest.fixture
def solver(tcp_server, tmp_path, monkeypatch):
    """make(ns, workflow, model_ns=None, **nekrs_ml keys) -> (coupling, field), the coupling
    created in the environment of a solver of namespace ns (and model namespace model_ns)."""
    for name, value in tcp_server.info["env"].items():
        monkeypatch.setenv(name, value)
    client = Client(**tcp_server.client_args())

    def make(ns, workflow="infer", model_ns=None, **options):
        monkeypatch.setenv("NEKRS_ML_NAMESPACE", ns)
        if model_ns:
            monkeypatch.setenv("NEKRS_ML_MODEL_NAMESPACE", model_ns)
        else:
            monkeypatch.delenv("NEKRS_ML_MODEL_NAMESPACE", raising=False)
        settings = {"workflow": workflow, "sampleInterval": 5, "sampleHeight": H,
                    "inferenceTimeout": 5, "timeout": 5, "maxSnapshots": 100, **options}
        par = tmp_path / f"{uuid.uuid4().hex[:6]}.par"
        par.write_text("[NEKRS_ML]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        field = channel()
        return _core.Coupling(str(par), single_rank(), field), field

    make.client = client
    try:
        yield make
    finally:
        client.close()


def member_ns(model_ns: str) -> str:
    return f"{model_ns}.{uuid.uuid4().hex[:6]}"


def test_a_wall_units_model_applies_the_stress_of_its_dimensional_twin(served, solver):
    """The first reply of the wall-units model came for dimensional inputs: not applied (the
    wall law, cause `features`); from the next call on both apply tau = A u."""
    dimensional, field_d = solver(member_ns(served), model_ns=served, modelName="dimensional")
    plus, field_p = solver(member_ns(served), model_ns=served, modelName="plus")
    for coupling in (dimensional, plus):
        coupling.step(0, 0.0, False)
    np.testing.assert_allclose(field_d.applied_stress, A * field_d.inputs()[:, :2], rtol=1e-6)
    np.testing.assert_allclose(field_p.applied_stress, field_p.targets(), rtol=1e-12)  # wall law
    assert (dimensional.model_features, plus.model_features) == ("dimensional", "wall_units")
    for step in range(1, 4):
        for field, coupling in ((field_d, dimensional), (field_p, plus)):
            field.advance()
            coupling.step(step, step * 1e-3, step == 3)
        np.testing.assert_array_equal(field_d.inputs(), field_p.inputs())  # the same channel
        expected = A * field_d.inputs()[:, :2]
        np.testing.assert_allclose(field_d.applied_stress, expected, rtol=1e-6)
        np.testing.assert_allclose(field_p.applied_stress, expected, rtol=1e-5)
        # the scheme is read once per version, not per call: the meta is not needed any more
        solver.client.redis.delete(keys.model_meta(served, "plus", 1))
    summaries = [json.loads(c.finish(3))["inference"] for c in (dimensional, plus)]
    assert [s["features"] for s in summaries] == ["dimensional", "wall_units"]
    assert [s["failures"]["features"] for s in summaries] == [0, 1]
    assert [s["fallbacks"] for s in summaries] == [0, 1]
    assert [s["predicted_calls"] for s in summaries] == [4, 3]
    assert summaries[1]["versions"] == [1]


def test_a_pruned_version_that_still_answers_is_scaled_as_its_model(served, solver, tmp_path):
    """A worker may still serve a version keepVersions pruned (a trainer publishing fast): a
    model name keeps its features, so the current version's meta tells the pruned one's."""
    registry.publish(solver.client, served, "pruned", scripted(Linear(A * H / NU),
                                                               tmp_path / "pruned.pt"),
                     {"n_in": 3, "n_out": 2, "dtype": "float32", "features": "wall_units"})
    first, first_field = solver(member_ns(served), model_ns=served, modelName="pruned")
    first.step(0, 0.0, False)
    first_field.advance()
    first.step(1, 1e-3, True)  # the worker has loaded v1, and it answered
    assert first.model_version == 1
    # v1 pruned; v2 current but unloadable (no blob): the worker goes on answering with v1
    v1_meta = solver.client.get_string(keys.model_meta(served, "pruned", 1))
    solver.client.redis.delete(keys.model_meta(served, "pruned", 1))
    solver.client.set_string(keys.model_meta(served, "pruned", 2), v1_meta)
    solver.client.set_string(keys.model_latest(served, "pruned"), b"2")
    coupling, field = solver(member_ns(served), model_ns=served, modelName="pruned")
    coupling.step(0, 0.0, False)
    for step in (1, 2):
        field.advance()
        coupling.step(step, step * 1e-3, step == 2)
        np.testing.assert_allclose(field.applied_stress, A * field.inputs()[:, :2], rtol=1e-5)
    inference = json.loads(coupling.finish(2))["inference"]
    assert inference["versions"] == [1] and inference["features"] == "wall_units"
    assert inference["failures"]["features"] == 1 and inference["fallbacks"] == 1, inference


def test_a_features_field_inside_a_nested_object_does_not_count(served, solver):
    coupling, field = solver(member_ns(served), model_ns=served, modelName="nested")
    coupling.step(0, 0.0, True)
    np.testing.assert_allclose(field.applied_stress, A * field.inputs()[:, :2], rtol=1e-6)
    assert json.loads(coupling.finish(0))["inference"]["features"] == "dimensional"


def test_an_unknown_feature_scheme_is_never_applied(served, solver, capfd):
    coupling, field = solver(member_ns(served), model_ns=served, modelName="outer",
                             maxInferenceFailures=100)
    coupling.step(0, 0.0, False)
    for step in (1, 2):
        field.advance()
        coupling.step(step, 0.0, step == 2)
        np.testing.assert_allclose(field.applied_stress, field.targets(), rtol=1e-12)
    inference = json.loads(coupling.finish(2))["inference"]
    assert inference["failures"]["features"] == 3 and inference["fallbacks"] == 3
    assert inference["features"] is None
    err = capfd.readouterr().err
    assert f"{served}:{{m:outer}}:v1:meta" in err and "outer_units" in err
    abort, _ = solver(member_ns(served), model_ns=served, modelName="outer",
                      onInferenceError="abort")
    with pytest.raises(NekrsMLError, match="features.*outer_units"):
        abort.step(0, 0.0, False)


def test_a_member_takes_the_shared_models_and_keeps_its_keys(served, solver):
    """NEKRS_ML_NAMESPACE = <ns>.<member>, NEKRS_ML_MODEL_NAMESPACE = <ns>: predictions of the
    worker of <ns>; every key the solver writes (stream, control, case, summary, done) is under
    <ns>.<member>, none of them under <ns>."""
    member = f"{served}.m1"
    before = set(solver.client.redis.scan_iter(f"{served}:*"))
    coupling, field = solver(member, "train+infer", model_ns=served, modelName="dimensional",
                             sampleInterval=2)
    coupling.step(0, 0.0, False)
    for step in range(1, 5):
        field.advance()
        coupling.step(step, step * 1e-3, step == 4)
        np.testing.assert_allclose(field.applied_stress, A * field.inputs()[:, :2], rtol=1e-6)
    summary = json.loads(coupling.finish(4))
    assert summary["inference"]["predicted_calls"] == 5 and summary["snapshots_written"] == 2
    written = {key.decode() for key in solver.client.redis.scan_iter(f"{member}:*")}
    assert {keys.solver_case(member), keys.solver_summary(member), keys.solver_done(member),
            keys.snapshot_index(member, 0), keys.holdout_inputs(member, 0)} <= written
    # only the worker touched the model namespace (its heartbeat); the solver wrote nothing there
    after = set(solver.client.redis.scan_iter(f"{served}:*"))
    assert {key.decode() for key in after - before} <= {keys.worker_heartbeat(served, 0)}
    case = json.loads(solver.client.get_string(keys.solver_case(member)))
    assert case == {"kinematic_viscosity": pytest.approx(NU, rel=1e-15), "sample_height": H,
                    "inputs": 3, "outputs": 2, "ranks": 1}


def test_the_case_is_stored_before_the_first_call(tcp_server, solver):
    """solver:case exists once the first step returns, also without a model (train only)."""
    ns = f"c{uuid.uuid4().hex[:8]}"
    coupling, _ = solver(ns, "train", sampleHeight=0.25)
    assert not solver.client.exists(keys.solver_case(ns))
    coupling.step(0, 0.0, False)
    case = json.loads(solver.client.get_string(keys.solver_case(ns)))
    assert (case["kinematic_viscosity"], case["sample_height"]) == (pytest.approx(NU), 0.25)
    coupling.finish(0)


def test_an_invalid_model_namespace_is_refused(tcp_server, solver):
    with pytest.raises(ConfigError, match="NEKRS_ML_MODEL_NAMESPACE='a:b'.*without"):
        solver("c1", model_ns="a:b")


def test_the_python_inference_client_splits_the_namespaces(served, tcp_server):
    member = f"{served}.py"
    with Client(**tcp_server.client_args()) as client:
        inference = InferenceClient(client, member, model_namespace=served, timeout=5)
        assert inference.queue_key == keys.inference_queue(served, 0)
        assert inference.heartbeat_key == keys.worker_heartbeat(served, 0)
        assert inference.reply_key("dimensional") == keys.inference_reply(member, 0, "dimensional")
        x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
        prediction = inference.run("dimensional", x)  # its width read from the shared registry
        np.testing.assert_allclose(prediction.outputs, A * x[:, :2], rtol=1e-6)
        assert prediction.version == 1
        plain = InferenceClient(client, member)  # default: the models of its own namespace
        assert plain.queue_key == keys.inference_queue(member, 0)
        with pytest.raises(ConfigError, match="model_namespace"):
            InferenceClient(client, member, model_namespace="a{b}")


@pytest.mark.slow  # one AOTInductor compilation (about a minute)
def test_the_inprocess_backend_switches_to_a_wall_units_version(tcp_server, solver):
    """In-process: v1 dimensional, v2 the same graph in wall units (a weight swap). The first
    call v2 answers is not applied; afterwards it applies tau = A u again, scaled by the
    coupling, not by the backend."""
    from nekrs_ml.models import aot
    from nekrs_ml.train.model import Exporter, deployable, program_bytes

    def linear(target_std: float):
        mlp = torch.nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            mlp.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        return deployable(mlp, np.zeros(3), np.ones(3), np.zeros(2), np.full(2, target_std))

    ns = f"m{uuid.uuid4().hex[:8]}"
    exporter = Exporter()

    def publish(target_std: float, meta: dict) -> int:
        program = exporter.program_for(linear(target_std))
        return registry.publish(solver.client, ns, "m", program_bytes(program),
                                {"n_in": 3, "n_out": 2, "format": "export", **meta},
                                weights_blob=aot.weights_blob(program, 3, 2))

    assert publish(A, {}) == 1
    aot.ensure_package(solver.client, ns, "m")
    coupling, field = solver(member_ns(ns), model_ns=ns, modelName="m",
                             inferenceBackend="inprocess", reloadInterval=0.01)
    coupling.step(0, 0.0, False)
    np.testing.assert_allclose(field.applied_stress, A * field.inputs()[:, :2], rtol=1e-5)
    assert publish(A * H / NU, {}) == 2
    # the registry keeps a name's features, so a change can only come from outside it (a record
    # written over, as here between two steps): the coupling still never applies it unscaled
    meta_key = keys.model_meta(ns, "m", 2)
    record = json.loads(solver.client.get_string(meta_key))
    solver.client.set_string(meta_key, json.dumps({**record, "features": "wall_units"}))
    step = 0
    while coupling.model_version != 2 and step < 200:
        step += 1
        field.advance()
        coupling.step(step, step * 1e-3, False)
    assert coupling.model_version == 2 and coupling.model_features == "wall_units"
    for step in range(step + 1, step + 3):
        field.advance()
        coupling.step(step, step * 1e-3, False)
        np.testing.assert_allclose(field.applied_stress, A * field.inputs()[:, :2], rtol=1e-5)
    inference = json.loads(coupling.finish(step))["inference"]
    assert inference["features"] == "wall_units" and inference["failures"]["features"] == 1
    assert inference["versions"] == [1, 2] and inference["backend"] == "inprocess"
