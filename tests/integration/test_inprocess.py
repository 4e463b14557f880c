"""In-process inference (libnekrsml_torch): a model's AOTInductor package evaluated in the calling
process, following the registry by weight swaps; the weights format both sides read; the stand-in
demo with inferenceBackend = inprocess. Packages take tens of seconds to compile, so the module
compiles one graph and plants its package where a test needs it."""

import io
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nekrs_ml import _core, keys
from nekrs_ml.models import aot, registry
from nekrs_ml.client import Client
from nekrs_ml.errors import ConfigError, ModelError, PackageMissingError, TensorFormatError
from nekrs_ml.models.deploy import deploy
from nekrs_ml.train.model import Exporter, build_mlp, deployable, program_bytes
from support.runs import TRAIN_INFER, finish, no_servers_left, report, start_run, write_case
from support.workers import Worker, scripted


def wall_model(seed: int, hidden=(16,), scale: float = 1.0):
    """A deployable 3 -> hidden -> 2 wall model (normalisation inside), float32."""
    torch.manual_seed(seed)
    return deployable(build_mlp(3, list(hidden), 2), np.zeros(3), np.full(3, 0.5),
                      np.array([1e-3, 0.0]), np.array([2e-3 * scale, 1e-4]))


def forward(model, inputs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(inputs)).numpy()


def inputs(rows: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (rows, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def package_of_graph_a(tcp_server, tmp_path_factory):
    """(model, program blob, weights blob, package bytes) of the module's one compiled graph."""
    model = wall_model(0)
    program = Exporter().program_for(model)
    blob = program_bytes(program)
    weights = aot.weights_blob(program, 3, 2)
    ns = f"c{uuid.uuid4().hex[:8]}"
    with Client(**tcp_server.client_args()) as client:
        registry.publish(client, ns, "m", blob, {"n_in": 3, "n_out": 2, "format": "export"},
                         weights_blob=weights)
        graph, compiled = aot.ensure_package(client, ns, "m")
        assert compiled and graph == aot.graph_id(program, 3, 2)
        package = client.get_string(keys.model_package(ns, "m", graph, "cpu", aot.torch_version()))
        assert aot.ensure_package(client, ns, "m") == (graph, False)  # compiled once per graph
        assert aot.packages(client, ns, "m") == [
            {"graph": graph, "device": "cpu", "torch": aot.torch_version()}]
    return model, blob, weights, package


class Registry:
    """A fresh namespace on the test server with helpers to publish wall models."""

    def __init__(self, server, package):
        self.server, self.package = server, package
        self.ns = f"t{uuid.uuid4().hex[:8]}"
        self.client = Client(**server.client_args())
        self.exporter = Exporter()

    def publish(self, model, plant_package=True) -> int:
        program = self.exporter.program_for(model)
        version = registry.publish(self.client, self.ns, "m", program_bytes(program),
                                   {"n_in": 3, "n_out": 2, "format": "export"},
                                   weights_blob=aot.weights_blob(program, 3, 2))
        if plant_package:
            self.plant(aot.graph_id(program, 3, 2), self.package)
        return version

    def plant(self, graph: str, package: bytes) -> None:
        self.client.set_string(keys.model_package(self.ns, "m", graph, "cpu", aot.torch_version()),
                               package)

    def backend(self, reload_interval: float = 0.01):
        native = _core.Client(**self.server.client_args())
        return native, _core.InprocessBackend(native, self.ns, reload_interval=reload_interval)


@pytest.fixture
def fresh(tcp_server, package_of_graph_a):
    namespace = Registry(tcp_server, package_of_graph_a[3])
    try:
        yield namespace
    finally:
        namespace.client.close()


# --- the weights format -----------------------------------------------------------------------
def test_cpp_core_reads_the_weights_python_writes():
    model = wall_model(3, hidden=(5, 4))
    program = Exporter().program_for(model)
    blob = aot.weights_blob(program, 3, 2)
    native = _core.parse_model_weights(blob)
    python = aot.parse_weights(blob)
    assert native["graph"] == python.graph == aot.graph_id(program, 3, 2)
    assert (native["n_in"], native["n_out"]) == (3, 2)
    state = model.state_dict()
    assert sorted(name for name, _, _ in native["tensors"]) == sorted(state)
    for name, shape, values in native["tensors"]:
        assert tuple(shape) == tuple(state[name].shape)
        np.testing.assert_array_equal(np.array(values, np.float32), state[name].numpy().ravel())
        np.testing.assert_array_equal(python.tensors[name], state[name].numpy())
    for broken in (blob[:-4], b"NKMLW2\n" + blob[7:], blob.replace(b"n_out 2", b"n_out x")):
        with pytest.raises(TensorFormatError, match="model weights"):
            _core.parse_model_weights(broken)
        with pytest.raises(ConfigError, match="model weights"):
            aot.parse_weights(broken)


def test_the_graph_id_ignores_weight_values_but_not_the_architecture():
    exporter = Exporter()
    first = aot.graph_id(exporter.program_for(wall_model(1)), 3, 2)
    assert aot.graph_id(exporter.program_for(wall_model(2)), 3, 2) == first
    assert aot.graph_id(exporter.program_for(wall_model(1, hidden=(17,))), 3, 2) != first


def test_publishing_exports_once_per_architecture_and_warns_nothing():
    """The trainer's publishing path: torch.export only, no TorchScript DeprecationWarning; a
    new version reuses the exported program with its own weights."""
    exporter = Exporter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        first = exporter.program_for(wall_model(1))
        blob = program_bytes(exporter.program_for(wall_model(2)))
    assert exporter.program is first
    loaded = torch.export.load(io.BytesIO(blob)).module()
    x = inputs(50)
    np.testing.assert_allclose(forward(loaded, x), forward(wall_model(2), x), rtol=1e-6)


# --- the in-process backend -----------------------------------------------------------------------
def test_predictions_equal_the_python_forward_for_both_backends(fresh, tcp_server, tmp_path):
    model = wall_model(4)
    path = tmp_path / "model.pt2"
    torch.export.save(Exporter().program_for(model), str(path))
    version = deploy(fresh.client, fresh.ns, "m", path)  # the deploy path adds the weights
    fresh.plant(registry.load(fresh.client, fresh.ns, "m", version)[1]["graph"], fresh.package)
    x = inputs(25000)
    expected = forward(model, x)
    native, backend = fresh.backend()
    out = np.empty((25000, 2), np.float32)
    reply = backend.run("m", x, out)
    assert reply["version"] == version and reply["shape"] == (25000, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-9)
    worker = Worker(tcp_server, fresh.ns)
    try:
        served = np.empty_like(out)
        _core.InferenceClient(native, fresh.ns, 0, 1, 30.0).run("m", x, served)
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-9)
    finally:
        worker.stop()
    with pytest.raises(TensorFormatError, match=r"takes float32\[n, 3\]"):
        backend.run("m", np.zeros((4, 2), np.float32), out)
    with pytest.raises(TensorFormatError, match="output buffer"):
        backend.run("m", x, np.empty((10, 2), np.float32))


def test_hot_reload_during_a_stream_of_calls(fresh):
    models = {fresh.publish(wall_model(10)): wall_model(10)}
    native, backend = fresh.backend(reload_interval=0.005)
    x = inputs(500)
    out = np.empty((500, 2), np.float32)
    backend.run("m", x, out)
    publisher_error = []

    def publish_more():
        try:
            for seed, version in zip(range(11, 16), range(2, 7)):
                time.sleep(0.05)
                models[version] = wall_model(seed, scale=seed)  # known before it is current
                assert fresh.publish(models[version], plant_package=False) == version
        except Exception as exc:  # reported below
            publisher_error.append(exc)

    publisher = threading.Thread(target=publish_more)
    publisher.start()
    seen, deadline = [], time.monotonic() + 30
    while (publisher.is_alive() or not seen or seen[-1] != max(models)) and time.monotonic() < deadline:
        reply = backend.run("m", x, out)  # never fails: a version appears with its weights
        seen.append(reply["version"])
        np.testing.assert_allclose(out, forward(models[reply["version"]], x), rtol=1e-5, atol=1e-9)
    publisher.join()
    assert not publisher_error
    assert seen == sorted(seen) and seen[-1] == 6 and len(set(seen)) >= 3, seen
    assert 0 < backend.last_swap_seconds < 0.05


def test_a_package_that_does_not_fit_is_refused_and_the_old_version_kept(fresh, tmp_path, capfd):
    first = fresh.publish(wall_model(20))
    native, backend = fresh.backend()
    x = inputs(100)
    out = np.empty((100, 2), np.float32)
    assert backend.run("m", x, out)["version"] == first
    # a new graph whose package key holds the package of another graph (a planted file)
    other = Exporter().program_for(wall_model(21, hidden=(8,)))
    wrong = registry.publish(fresh.client, fresh.ns, "m", program_bytes(other),
                             {"n_in": 3, "n_out": 2, "format": "export"},
                             weights_blob=aot.weights_blob(other, 3, 2))
    fresh.plant(aot.graph_id(other, 3, 2), fresh.package)
    time.sleep(0.02)
    assert backend.run("m", x, out)["version"] == first
    np.testing.assert_allclose(out, forward(wall_model(20), x), rtol=1e-5, atol=1e-9)
    assert backend.refresh("m") == first
    err = capfd.readouterr().err
    assert err.count(f"keeps v{first}") == 1 and "does not fit (nekrs_ml.graph" in err
    # a TorchScript version has no in-process form: refused, the old one kept
    scripted(torch.nn.Linear(3, 2), tmp_path / "legacy.pt")
    assert deploy(fresh.client, fresh.ns, "m", tmp_path / "legacy.pt") == wrong + 1
    time.sleep(0.02)
    assert backend.run("m", x, out)["version"] == first
    assert "not a torch.export version" in capfd.readouterr().err
    # a process that has nothing loaded yet gets the reason as an error
    _, starting = fresh.backend()
    with pytest.raises(ModelError, match="not a torch.export version"):
        starting.run("m", x, out)
    registry.rollback(fresh.client, fresh.ns, "m", wrong)
    _, starting = fresh.backend()
    with pytest.raises(ModelError, match=r"does not fit \(nekrs_ml.graph"):
        starting.run("m", x, out)


def test_a_new_graph_loads_its_own_package(fresh):
    """A version of another architecture: the backend loads that graph's package (compiled
    here) and answers with the new version, without a failed call in between."""
    fresh.publish(wall_model(40))
    native, backend = fresh.backend()
    x = inputs(300)
    out = np.empty((300, 2), np.float32)
    assert backend.run("m", x, out)["version"] == 1
    wider = wall_model(41, hidden=(12, 6))
    assert fresh.publish(wider, plant_package=False) == 2
    time.sleep(0.02)
    assert backend.run("m", x, out)["version"] == 1  # its package is not compiled yet
    graph, compiled = aot.ensure_package(fresh.client, fresh.ns, "m")
    assert compiled
    time.sleep(0.02)
    assert backend.run("m", x, out)["version"] == 2
    np.testing.assert_allclose(out, forward(wider, x), rtol=1e-5, atol=1e-9)


def test_missing_packages_and_libraries_are_named_with_the_fix(fresh, tcp_server):
    model = wall_model(30)
    fresh.publish(model, plant_package=False)
    native, backend = fresh.backend()
    out = np.empty((10, 2), np.float32)
    with pytest.raises(PackageMissingError, match="nekrs-ml compile --model m"):
        backend.run("m", inputs(10), out)
    graph = aot.graph_id(Exporter().program_for(model), 3, 2)
    fresh.plant(graph, b"PK\x03\x04 planted, not a package")  # tried again: refused
    time.sleep(0.02)
    with pytest.raises(ModelError, match="not an AOTInductor package"):
        backend.run("m", inputs(10), out)
    fresh.client.set_string(keys.model_latest(fresh.ns, "planted"), "garbage")
    with pytest.raises(ModelError, match="holds 'garbage', not a version number"):
        backend.run("planted", inputs(10), out)
    with pytest.raises(ConfigError, match=r"cannot load /nonexistent/libnekrsml_torch.so .*"
                                          r"inferenceBackend = worker"):
        _core.InprocessBackend(native, fresh.ns, library="/nonexistent/libnekrsml_torch.so")
    with pytest.raises(ConfigError, match="inprocessDevice = tpu"):
        _core.InprocessBackend(native, fresh.ns, device="tpu")
    assert Path(_core.inprocess_library_path()).is_file()


def test_stand_in_demo_runs_with_the_inprocess_backend(run_dir, package_of_graph_a):
    model, blob, _, _ = package_of_graph_a
    model_file = Path(run_dir) / "tau_model.pt2"
    model_file.write_bytes(blob)
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer", "deployModel": f'"{model_file}"',
                                             "inferenceBackend": "inprocess"},
                                "REPRODUCER": {"steps": 100}})
    code, out = finish(start_run(case, run_dir), timeout=300)
    assert code == 0, out[-3000:]
    assert "compiled the in-process package" in out
    assert not list(Path(run_dir).glob("worker*.log"))  # no model worker in this run
    inference = report(run_dir)["inference"]
    assert inference["backend"] == "inprocess"
    assert inference["calls"] == 202 and inference["waiting_calls"] == 0
    assert inference["fallbacks"] == 0 and inference["version_by_step"] == [[0, 100, 1]]
    assert no_servers_left(run_dir)


def test_training_run_feeds_the_inprocess_backend(run_dir):
    """train+infer with inferenceBackend = inprocess: the trainer compiles the package of its
    graph beside training; the solver uses the wall law until then, the newest version after."""
    steps = 3000
    case = write_case(run_dir, {"NEKRS_ML": {"inferenceBackend": "inprocess"},
                                "REPRODUCER": {"steps": steps}}, base=TRAIN_INFER)
    code, out = finish(start_run(case, run_dir), timeout=600)
    assert code == 0, out[-3000:]
    log = (Path(run_dir) / "trainer.log").read_text()
    assert "compiling the in-process package of wall_model v1" in log, log[-2000:]
    assert not list(Path(run_dir).glob("worker*.log"))
    inference = report(run_dir)["inference"]
    assert inference["calls"] + inference["waiting_calls"] == 2 * (steps + 1)
    assert inference["calls"] > 0 and inference["fallbacks"] == 0, inference
    versions = [version for _, _, version in inference["version_by_step"]]
    assert len(versions) >= 2 and versions == sorted(versions), inference["version_by_step"]
    assert inference["tau_w_rel_error_final"]["median"] < 0.02
    assert no_servers_left(run_dir)


def test_a_train_and_infer_run_that_never_applied_a_model_is_not_ok(run_dir):
    """The trainer publishes only its final model, after the solver ended: every call waited and
    used the wall law, so the run ends no_model (exit code 6) and says what the solver waited for."""
    case = write_case(run_dir, {"NEKRS_ML": {"inferenceBackend": "inprocess",
                                             "publishInterval": 100000},
                                "REPRODUCER": {"steps": 60}}, base=TRAIN_INFER)
    code, out = finish(start_run(case, run_dir), timeout=300)
    data = report(run_dir)
    assert code == 6 and data["status"] == "no_model", out[-3000:]
    inference = data["inference"]
    assert inference["predicted_calls"] == 0 and inference["waiting_calls"] == 2 * 61
    assert inference["predicted_share"] == 0 and "no published version" in inference["waiting_for"]
    assert inference["package"]["state"] == "unknown" or inference["package"]["version"] == 0
    last = [line for line in out.splitlines() if line.startswith("nekrs-ml run: no_model")]
    assert last and "no model applied (wall law at every step)" in last[-1], out[-2000:]
    assert "the solver never applied the model: every one of its 122 inference calls waited" in out
    assert no_servers_left(run_dir)
