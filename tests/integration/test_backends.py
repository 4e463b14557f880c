"""The model backends besides Torch: ONNX Runtime, TensorFlow (SavedModel, frozen graph) and
TensorFlow Lite. Each model is made by its framework (torch.onnx.export, a Keras model exported
by TF, TF's TFLite converter), deployed, probed, served by a real `nekrs-ml serve` worker, and
answers as the framework itself does; bad files of each kind are refused with the reason.

The frameworks come with `pip install 'nekrs_ml[backends]'` (install.sh --test); where one is
missing its tests skip and say which package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from nekrs_ml import keys
from nekrs_ml.models import registry
from nekrs_ml.models.backend_formats import probe_rows, refuse_inprocess
from nekrs_ml.client import Client
from nekrs_ml.errors import ConfigError
from nekrs_ml.inference import InferenceClient
from nekrs_ml.models.deploy import deploy
from support.runs import finish, no_servers_left, report, start_run, write_case
from support.smartredis import CompatRun

RTOL, ATOL = 1e-5, 1e-6
N_IN, N_OUT = 3, 2


def rows(n: int = 200, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2.0, 2.0, (n, N_IN)).astype(np.float32)


# --- models made by each framework -------------------------------------------------------------
def torch_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(N_IN, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, N_OUT)).eval()


def onnx_file(path: Path, module: torch.nn.Module) -> Path:
    """``module`` exported by torch.onnx.export with a dynamic number of points."""
    pytest.importorskip("onnx", reason="torch.onnx.export needs onnx (pip install 'nekrs_ml[backends]')")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(4, N_IN),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "points"}, "y": {0: "points"}},
                          dynamo=False)
    return path


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow-cpu "
                               "(pip install 'nekrs_ml[backends]')")


def keras_mlp(seed: int = 0):
    tf = tensorflow()
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([tf.keras.Input((N_IN,)),
                                tf.keras.layers.Dense(32, activation="tanh"),
                                tf.keras.layers.Dense(N_OUT)])


def concrete(model):
    """The Keras model as a function of float32[None, 3] named "x"."""
    tf = tensorflow()
    @tf.function(input_signature=[tf.TensorSpec([None, N_IN], tf.float32, name="x")],
                 autograph=False)
    def forward(x):
        return model(x)

    return forward.get_concrete_function()


def frozen_graph(path: Path, model) -> Path:
    """A frozen GraphDef as RedisAI's TF backend takes it: input "x", output "y"."""
    tf = tensorflow()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(concrete(model))
    graph_def = frozen.graph.as_graph_def()
    output = frozen.outputs[0].name.split(":")[0]
    graph_def.node.add(name="y", op="Identity", input=[output]).attr["T"].type = \
        tf.float32.as_datatype_enum
    path.write_bytes(graph_def.SerializeToString())
    return path


def tflite_file(path: Path, model) -> Path:
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path.write_bytes(converter.convert())
    return path


def tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """The TFLite interpreter's own answer."""
    from nekrs_ml.models.backends import _tflite_interpreter

    interpreter = _tflite_interpreter()(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


# --- a worker ----------------------------------------------------------------------------------
class Served:
    """A `nekrs-ml serve` process in a namespace of its own on the test server."""

    def __init__(self, server, **extra_env):
        self.server, self.ns = server, f"be{uuid.uuid4().hex[:8]}"
        self.client = Client(**server.client_args())
        self.env = env = {**os.environ, **server.info["env"], "NEKRS_ML_NAMESPACE": self.ns,
                          **extra_env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nekrs_ml.cli", "serve", "--threads", "1",
             "--reload-interval", "0.05"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not self.client.exists(keys.worker_heartbeat(self.ns, 0)):
            assert self.process.poll() is None, self.process.communicate()[0]
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        self.output = None

    def predict(self, name: str, x: np.ndarray, rank: int = 0):
        return InferenceClient(self.client, self.ns, rank=rank, timeout=120.0).run(name, x)

    def run(self, name: str, x: np.ndarray, rank: int = 0) -> np.ndarray:
        return self.predict(name, x, rank).outputs

    def stop(self) -> str:
        if self.output is None:
            self.process.terminate()
            try:
                self.output = self.process.communicate(timeout=30)[0]
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.output = self.process.communicate()[0]
            self.client.close()
        return self.output


@pytest.fixture(scope="module")
def served(tcp_server):
    worker = Served(tcp_server)
    try:
        yield worker
    finally:
        print(worker.stop())


def record(served, name: str) -> dict:
    return registry.load(served.client, served.ns, name)[1]


# --- ONNX Runtime ------------------------------------------------------------------------------
def test_onnx_model_is_deployed_probed_and_served(served, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime "
                        "(pip install 'nekrs_ml[backends]')")
    module = torch_mlp(1)
    path = onnx_file(tmp_path / "wall.onnx", module)
    version = deploy(served.client, served.ns, "wall_onnx", path)
    meta = record(served, "wall_onnx")
    assert (meta["backend"], meta["format"], meta["n_in"], meta["n_out"]) == ("onnx", "onnx", 3, 2)
    x = rows()
    got = served.run("wall_onnx", x)
    np.testing.assert_allclose(got, onnx_predict(path, x), rtol=RTOL, atol=ATOL)
    with torch.inference_mode():
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    assert version == 1


def test_onnx_hot_reload_rollback_and_a_broken_version(served, tmp_path):
    """A new ONNX version is picked up between batches; one that answers NaN on its first batch
    is rolled back; one ONNX Runtime cannot load leaves the old version serving."""
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
    first, second = torch_mlp(2), torch_mlp(3)
    a = onnx_file(tmp_path / "a.onnx", first)
    b = onnx_file(tmp_path / "b.onnx", second)
    x = rows(50)
    deploy(served.client, served.ns, "reload_onnx", a)
    np.testing.assert_allclose(served.run("reload_onnx", x), onnx_predict(a, x), rtol=RTOL,
                               atol=ATOL)
    v2 = deploy(served.client, served.ns, "reload_onnx", b)
    deadline = time.monotonic() + 30
    while True:
        got = served.run("reload_onnx", x)
        if np.allclose(got, onnx_predict(b, x), rtol=RTOL, atol=ATOL):
            break
        assert time.monotonic() < deadline, "the worker never switched to v2"
        time.sleep(0.05)

    class Nan(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x[:, :2] * float("nan"), x[:, :0]], dim=1)

    nan = onnx_file(tmp_path / "nan.onnx", Nan())
    meta = {"n_in": 3, "n_out": 2, "format": "onnx", "backend": "onnx"}
    registry.publish(served.client, served.ns, "reload_onnx", nan.read_bytes(), meta)
    time.sleep(0.3)
    for _ in range(3):  # rolled back on its first batch: every answer is v2's
        answer = served.predict("reload_onnx", x)
        np.testing.assert_allclose(answer.outputs, onnx_predict(b, x), rtol=RTOL, atol=ATOL)
        assert answer.version == 2
    v4 = registry.publish(served.client, served.ns, "reload_onnx", b"not an onnx model", meta)
    time.sleep(0.3)
    answer = served.predict("reload_onnx", x)
    np.testing.assert_allclose(answer.outputs, onnx_predict(b, x), rtol=RTOL, atol=ATOL)
    assert (answer.version, v4) == (2, 4)
    assert v2 == 2


def test_a_worker_without_onnxruntime_answers_with_the_package_to_install(tcp_server, tmp_path):
    """An ONNX version reaches a worker whose Python has no onnxruntime (here: an import that
    fails, put first on its path): its callers get an error naming the package."""
    from nekrs_ml.errors import ModelError

    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('onnxruntime is not installed')\n")
    path = onnx_file(tmp_path / "m.onnx", torch_mlp())
    worker = Served(tcp_server, PYTHONPATH=str(shadow.parent))
    try:
        registry.publish(worker.client, worker.ns, "m", path.read_bytes(),
                         {"n_in": 3, "n_out": 2, "format": "onnx", "backend": "onnx"})
        with pytest.raises(ModelError, match=r"needs onnxruntime, which is not installed here; "
                                             r"install it \(pip install 'nekrs_ml\[backends\]'\)"):
            worker.run("m", rows(10))
    finally:
        worker.stop()


# --- TensorFlow ----------------------------------------------------------------------------------
def test_keras_savedmodel_is_deployed_and_served(served, tmp_path):
    model = keras_mlp(4)
    directory = tmp_path / "wall_savedmodel"
    model.export(str(directory), verbose=False)
    deploy(served.client, served.ns, "wall_tf", directory)
    meta = record(served, "wall_tf")
    assert (meta["backend"], meta["format"], meta["n_in"], meta["n_out"]) == \
        ("tf", "tf-savedmodel", 3, 2)
    x = rows()
    np.testing.assert_allclose(served.run("wall_tf", x), model(x).numpy(), rtol=RTOL, atol=ATOL)


def test_frozen_graph_is_deployed_with_its_names_and_served(served, tmp_path):
    model = keras_mlp(5)
    path = frozen_graph(tmp_path / "wall.pb", model)
    deploy(served.client, served.ns, "wall_pb", path, tf_names=(["x"], ["y"]))
    meta = record(served, "wall_pb")
    assert (meta["backend"], meta["format"], meta["inputs"], meta["outputs"]) == \
        ("tf", "tf-graph", ["x"], ["y"])
    x = rows()
    np.testing.assert_allclose(served.run("wall_pb", x), model(x).numpy(), rtol=RTOL, atol=ATOL)
    # without names: its one placeholder and the one operation nothing takes
    deploy(served.client, served.ns, "wall_pb_guessed", path)
    assert record(served, "wall_pb_guessed")["inputs"] == ["x"]
    cli = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "deploy", str(path), "--name",
                          "wall_pb_cli", "--tf-inputs", "x", "--tf-outputs", "y"], env=served.env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert record(served, "wall_pb_cli")["outputs"] == ["y"]
    cli = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "deploy", str(path), "--name",
                          "wall_pb_cli", "--tf-inputs", "x"], env=served.env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and "--tf-inputs and --tf-outputs go together" in cli.stderr


# --- TensorFlow Lite ---------------------------------------------------------------------------
def test_tflite_model_is_deployed_and_served(served, tmp_path):
    model = keras_mlp(6)
    path = tflite_file(tmp_path / "wall.tflite", model)
    deploy(served.client, served.ns, "wall_tflite", path)
    meta = record(served, "wall_tflite")
    assert (meta["backend"], meta["format"], meta["n_in"], meta["n_out"]) == \
        ("tflite", "tflite", 3, 2)
    for n in (200, 7, 200):  # batches of other sizes resize the interpreter
        x = rows(n, seed=n)
        got = served.run("wall_tflite", x)
        np.testing.assert_allclose(got, tflite_predict(path, x), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


# --- refusals ----------------------------------------------------------------------------------
def test_bad_files_of_each_kind_are_refused(tcp_server, tmp_path):
    client = Client(**tcp_server.client_args())
    ns = f"bad{uuid.uuid4().hex[:8]}"
    try:
        def refused(path, match, **kwargs):
            with pytest.raises(ConfigError, match=match):
                deploy(client, ns, "bad", path, **kwargs)

        empty = tmp_path / "empty_dir"
        empty.mkdir()
        refused(empty, "is not a file")  # not a SavedModel either: no saved_model.pb
        (tmp_path / "saved_model.pb").write_bytes(b"graph")
        refused(tmp_path / "saved_model.pb", "the graph of a SavedModel: deploy its directory")
        if _have("onnxruntime"):
            (tmp_path / "junk.onnx").write_bytes(b"\x08\x07 not protobuf at all")
            refused(tmp_path / "junk.onnx", r"junk.onnx is not a valid onnx model")

            class Flat(torch.nn.Module):  # one value per point: not [points, outputs]
                def forward(self, x):
                    return x.sum(dim=1)

            refused(onnx_file(tmp_path / "flat.onnx", Flat()), r"flat.onnx: returned \(64,\)")

            class Blows(torch.nn.Module):  # overflows on the probe's large rows
                def forward(self, x):
                    return torch.exp(x[:, :2] * 100.0)

            refused(onnx_file(tmp_path / "inf.onnx", Blows()), "non-finite outputs")
            refused(onnx_file(tmp_path / "ok.onnx", torch_mlp()), "expected 5",
                    n_out=5)
        if _have("tensorflow"):
            (tmp_path / "junk.pb").write_bytes(b"\xff\xfe garbage")
            refused(tmp_path / "junk.pb", "junk.pb")
            refused(frozen_graph(tmp_path / "g.pb", keras_mlp()), "no such tensor",
                    tf_names=(["nope"], ["y"]))
            (tmp_path / "junk.tflite").write_bytes(b"TFL3 but not really a model")
            refused(tmp_path / "junk.tflite", "junk.tflite is not a valid tflite model")
        assert registry.models(client, ns) == {}  # nothing was stored
    finally:
        client.close()


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_a_non_torch_model_is_refused_for_inprocess_inference():
    for fmt, backend in (("onnx", "onnx"), ("tflite", "tflite"), ("tf-savedmodel", "tf"),
                         ("torchscript", "torch")):
        with pytest.raises(ConfigError, match="inferenceBackend = worker"):
            refuse_inprocess({"name": "m", "version": 1, "format": fmt, "backend": backend})
    refuse_inprocess({"name": "m", "version": 1, "format": "export", "backend": "torch"})


def test_inprocess_run_refuses_a_non_torch_deploy_model_before_it_starts(tmp_path):
    from nekrs_ml.serve.settings import DeploySettings

    (tmp_path / "wall.onnx").write_bytes(b"any")
    case = write_case(str(tmp_path), {"NEKRS_ML": {"inferenceBackend": "inprocess",
                                                   "deployModel": "wall.onnx"}})
    with pytest.raises(ConfigError, match=r"case.par: deployModel = wall.onnx is an ONNX, "
                                          r"TensorFlow or TFLite model \(onnx\): "
                                          "inferenceBackend = inprocess"):
        DeploySettings.from_par(case)
    worker_case = write_case(str(tmp_path), {"NEKRS_ML": {"deployModel": "wall.onnx"}})
    assert DeploySettings.from_par(worker_case).model_file == (tmp_path / "wall.onnx").resolve()


def test_probe_rows_are_realistic():
    x = probe_rows(3)
    assert x.shape == (64, 3) and x.dtype == np.float32
    assert np.abs(x[:61]).max() <= 2.0 and np.abs(x[61:63]).max() > 2.0 and not x[63].any()


def test_record_format_is_documented():
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for word in ("tf-savedmodel", "tf-graph", "tflite", "`backend`"):
        assert word in text, word


# --- SmartRedis ----------------------------------------------------------------------------------
PROGRAM = Path(__file__).parents[1] / "support" / "smartredis_backends_program.py"


def test_smartredis_program_runs_each_backend(smartredis_python, tmp_path):
    """The unchanged SmartRedis 0.6.1 client stores an ONNX, a TF and a TFLite model with
    AI.MODELSTORE and runs each with run_model; the worker's answers equal the frameworks'."""

    x = rows(100)
    np.save(tmp_path / "x.npy", x)
    expected = {}
    if _have("onnxruntime") and _have("onnx"):
        path = onnx_file(tmp_path / "model.onnx", torch_mlp(7))
        expected["ONNX"] = onnx_predict(path, x)
    if _have("tensorflow"):
        model = keras_mlp(8)
        frozen_graph(tmp_path / "model.pb", model)
        expected["TF"] = model(x).numpy()
        expected["TFLITE"] = tflite_predict(tflite_file(tmp_path / "model.tflite", model), x)
    if not expected:
        pytest.skip("neither onnxruntime nor tensorflow is installed (pip install "
                    "'nekrs_ml[backends]')")
    run = CompatRun("single")
    try:
        env = dict(os.environ, SR_LOG_LEVEL="QUIET")
        env.pop("PYTHONPATH", None)
        done = subprocess.run([smartredis_python, str(PROGRAM), run.ssdb, run.kind,
                               str(tmp_path), *expected], capture_output=True, text=True,
                              timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:] + run.stop_worker()
        out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        run.stop()
    for backend, reference in expected.items():
        assert out[backend], backend
        got = np.load(tmp_path / f"y_{backend.lower()}.npy")
        np.testing.assert_allclose(got, reference, rtol=RTOL, atol=ATOL, err_msg=backend)
    if "TF" in expected:
        assert "INPUTS and OUTPUTS" in out["tf_without_names"]


# --- the trainer's ONNX versions -----------------------------------------------------------------
def test_trainer_publishes_onnx_with_export_format_onnx(tcp_server, run_dir, served):
    """exportFormat = onnx: the trainer's versions are ONNX models (normalisation inside), its
    run directory holds NAME.onnx with the metadata, and that file deploys and is served."""
    pytest.importorskip("onnx", reason="exportFormat = onnx needs onnx")
    pytest.importorskip("onnxruntime", reason="serving ONNX needs onnxruntime")
    pytest.importorskip("mpi4py")
    from support.training import StreamingSolver, fresh_namespace, log_of, trainer_env, training, \
        write_par

    ns = fresh_namespace()
    client = Client(**tcp_server.client_args())
    par = write_par(run_dir, stopSolver="true", maxEpochs=4, publishInterval=2,
                    exportFormat="onnx")
    solver = StreamingSolver(tcp_server.client_args(), ns, duration=90.0)
    with training(par, run_dir, trainer_env(tcp_server, ns), solver, ranks=1) as process:
        code = process.wait(timeout=180)
    assert code == 0, log_of(run_dir)
    blob, meta = registry.load(client, ns, "tau_model")
    assert (meta["format"], meta["backend"], meta["n_in"], meta["n_out"]) == ("onnx", "onnx", 1, 1)
    assert not meta["export"] and "graph" not in meta
    summary = json.loads(Path(run_dir, "trainer.json").read_text())
    assert summary["model_file"] == str(Path(run_dir, "tau_model.onnx"))
    path = Path(summary["model_file"])
    assert path.read_bytes() == blob
    u = np.linspace(0.5, 20.0, 50, dtype=np.float32).reshape(-1, 1)
    expected = onnx_predict(path, u)
    assert expected.shape == (50, 1) and np.isfinite(expected).all()
    deploy(served.client, served.ns, "trained_onnx", path)  # deployModel accepts it
    deployed = record(served, "trained_onnx")
    assert deployed["epoch"] == meta["epoch"] and deployed["backend"] == "onnx"
    np.testing.assert_allclose(served.run("trained_onnx", u), expected, rtol=RTOL, atol=ATOL)
    client.close()


def test_export_format_onnx_is_refused_for_inprocess_inference(tmp_path):
    from types import SimpleNamespace

    from nekrs_ml.train.settings import Settings
    from support.training import write_par

    par = write_par(str(tmp_path), exportFormat="onnx", inferenceBackend="inprocess",
                    workflow="train+infer")
    with pytest.raises(ConfigError, match="exportFormat = onnx with inferenceBackend = inprocess"):
        Settings.from_args(SimpleNamespace(par=par, run_dir=str(tmp_path), data_timeout=1.0,
                                           resume=False))


# --- the benchmark -------------------------------------------------------------------------------
def test_bench_inference_measures_the_onnx_form_beside_the_torch_model():
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
    pytest.importorskip("onnx", reason="the ONNX form is exported with onnx")
    done = subprocess.run(
        [sys.executable, "-m", "nekrs_ml.cli", "bench", "inference", "--ranks", "1", "--calls",
         "5", "--points", "2000", "--models", "mlp_1_20_1,mlp_1_20_1_onnx", "--devices", "cpu",
         "--paths", "forward,worker", "--worker-threads", "1",
         "--json"], capture_output=True, text=True, timeout=600, cwd="/tmp")
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(done.stdout)
    found = {(r["model"], r["path"]) for r in records}
    assert {("mlp_1_20_1_onnx", "forward"), ("mlp_1_20_1_onnx", "worker"),
            ("mlp_1_20_1", "worker")} <= found
    assert all(r["p50_us"] > 0 for r in records)


def test_modelstore_takes_the_four_backends_and_says_which(tmp_path):
    """The module stores TF, TFLITE and ONNX like TORCH (the workers decide whether they can run
    them); TF needs INPUTS and OUTPUTS, as in RedisAI 1.2; AI.INFO names the model's backend."""
    import redis


    run = CompatRun("single", workers=False)
    try:
        with run.node(run.addresses[0]) as conn:
            for backend in ("TORCH", "ONNX", "TFLITE"):
                assert conn.execute_command("AI.MODELSTORE", f"m_{backend}", backend, "CPU",
                                            "BLOB", b"model") == b"OK"
                info = conn.execute_command("AI.INFO", f"m_{backend}")
                assert dict(zip(info[::2], info[1::2]))[b"backend"] == backend.encode()
            assert conn.execute_command("AI.MODELSTORE", "m_tf", "TF", "CPU", "INPUTS", 1, "x",
                                        "OUTPUTS", 1, "y", "BLOB", b"graph") == b"OK"
            with pytest.raises(redis.ResponseError, match="INPUTS and OUTPUTS not specified"):
                conn.execute_command("AI.MODELSTORE", "m_tf2", "TF", "CPU", "BLOB", b"graph")
            with pytest.raises(redis.ResponseError, match="unsupported backend OPENVINO"):
                conn.execute_command("AI.MODELSTORE", "m_x", "OPENVINO", "CPU", "BLOB", b"x")
            assert conn.execute_command("AI.CONFIG", "LOADBACKEND", "ONNX", "x.so") == b"OK"
    finally:
        run.stop()


# --- a whole run -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["onnx", "tflite", "savedmodel"])
def test_infer_run_serves_a_deployed_model_of_each_backend(run_dir, kind):
    """`nekrs-ml run` with deployModel = an ONNX, TFLite or SavedModel model: deployed, served
    to the stand-in solver's 2 ranks for every step, no fallback."""

    if kind == "onnx":
        pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
        model_file = onnx_file(Path(run_dir) / "tau_model.onnx", torch_mlp(9))
    elif kind == "tflite":
        model_file = tflite_file(Path(run_dir) / "tau_model.tflite", keras_mlp(9))
    else:
        model_file = Path(run_dir) / "tau_model_savedmodel"
        keras_mlp(9).export(str(model_file), verbose=False)
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer", "deployModel": f'"{model_file}"'},
                                "REPRODUCER": {"steps": 100}})
    code, out = finish(start_run(case, run_dir), timeout=300)
    assert code == 0, out[-3000:]
    assert f"deployed {model_file}" in out
    backend = {"onnx": "onnx", "tflite": "tflite", "savedmodel": "tf"}[kind]
    assert f"by {backend}" in (Path(run_dir) / "worker0.log").read_text()
    inference = report(run_dir)["inference"]
    assert inference["calls"] == 202 and inference["fallbacks"] == 0
    assert inference["version_by_step"] == [[0, 100, 1]]
    assert no_servers_left(run_dir)
