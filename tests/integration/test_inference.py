"""Online inference against real model workers (`nekrs-ml serve` processes) on every server kind:
exact predictions, hot reload, concurrency, errors, deployment and rollback."""

import io
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import torch

from nekrs_ml import _core, keys
from nekrs_ml.models import registry
from nekrs_ml.client import Client
from nekrs_ml.errors import (
    ConfigError,
    KeyNotFoundError,
    TensorFormatError,
    WorkerUnavailableError,
)
from nekrs_ml.inference import InferenceClient
from nekrs_ml.models.deploy import deploy
from support.waiting import wait_for
from support.workers import WORKER_DEVICE, Worker, mlp, scripted


def doubling() -> torch.nn.Module:
    """y = 2 x exactly: every reply can be checked against its own request."""
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.zero_()
    return layer


def reference(blob: bytes, inputs: np.ndarray) -> np.ndarray:
    module = torch.jit.load(io.BytesIO(blob))
    with torch.inference_mode():
        return module(torch.from_numpy(inputs)).numpy()


@pytest.fixture
def served(server, tmp_path):
    """(server, namespace, python client, {name: blob}, worker) with models deployed."""
    ns = f"t{uuid.uuid4().hex[:8]}"
    client = Client(**server.client_args())
    blobs = {"mlp": scripted(mlp(0), tmp_path / "mlp.pt"),
             "double": scripted(doubling(), tmp_path / "double.pt")}
    for name in blobs:
        assert deploy(client, ns, name, tmp_path / f"{name}.pt") == 1
    worker = Worker(server, ns)
    try:
        yield server, ns, client, blobs, worker
    finally:
        worker.stop()
        client.close()


def native_inference(server, ns, rank=0, timeout=10.0, heartbeat_check=1.0):
    native = _core.Client(**server.client_args())
    return native, _core.InferenceClient(native, ns, rank, 1, timeout, heartbeat_check)


def test_predictions_equal_a_direct_forward(served):
    server, ns, client, blobs, _ = served
    inputs = np.random.default_rng(1).uniform(-2, 2, (25000, 3)).astype(np.float32)
    expected = reference(blobs["mlp"], inputs)
    _, inference = native_inference(server, ns)
    out = np.empty((25000, 2), np.float32)
    reply = inference.run("mlp", inputs, out)
    assert reply["version"] == 1 and tuple(reply["shape"]) == (25000, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    python = InferenceClient(client, ns, rank=1).run("mlp", inputs)
    assert python.version == 1
    np.testing.assert_allclose(python.outputs, expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


def test_hot_reload_switches_version_without_a_failed_call(served, tmp_path):
    server, ns, client, blobs, _ = served
    new_blob = scripted(mlp(1), tmp_path / "mlp_v2.pt")
    inputs = np.random.default_rng(2).uniform(-1, 1, (500, 3)).astype(np.float32)
    by_version = {1: reference(blobs["mlp"], inputs), 2: reference(new_blob, inputs)}
    _, inference = native_inference(server, ns)
    out = np.empty((500, 2), np.float32)
    seen, failures = [], []
    published = threading.Event()

    def publish():
        time.sleep(0.3)
        deploy(client, ns, "mlp", tmp_path / "mlp_v2.pt")
        published.set()

    thread = threading.Thread(target=publish)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (published.is_set() and seen[-20:] == [2] * 20):
        try:
            version = inference.run("mlp", inputs, out)["version"]
        except Exception as exc:  # any failure fails the test below
            failures.append(repr(exc))
            continue
        np.testing.assert_allclose(out, by_version[version], rtol=1e-6, atol=1e-6)
        seen.append(version)
    thread.join()
    assert not failures
    assert seen[0] == 1 and seen[-1] == 2
    assert seen == sorted(seen), "versions went back and forth"


def test_eight_concurrent_clients_get_their_own_replies(served):
    server, ns, _, _, _ = served
    calls, points, errors = 1000, 16, []

    def rank_loop(rank: int):
        try:
            _, inference = native_inference(server, ns, rank=rank)
            out = np.empty((points, 1), np.float32)
            for call in range(calls):
                inputs = (rank * 100000 + call + np.arange(points, dtype=np.float32) / 64
                          ).astype(np.float32).reshape(points, 1)
                inference.run("double", inputs, out)
                if not np.array_equal(out, 2 * inputs):
                    errors.append(f"rank {rank} call {call}: wrong reply")
                    return
        except Exception as exc:
            errors.append(f"rank {rank}: {exc!r}")

    threads = [threading.Thread(target=rank_loop, args=(rank,)) for rank in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors[:3]


def test_bad_requests_get_clear_errors(served):
    server, ns, client, _, _ = served
    _, inference = native_inference(server, ns)
    out = np.empty((10, 2), np.float32)
    with pytest.raises(TensorFormatError, match=r"expects float32\[points, 3\], got float32\[10, 2\]"):
        inference.run("mlp", np.zeros((10, 2), np.float32), out)
    with pytest.raises(TensorFormatError, match=r"expects float32\[points, 3\], got float64\[10, 3\]"):
        inference.run("mlp", np.zeros((10, 3), np.float64), np.empty((10, 2), np.float64))
    with pytest.raises(KeyNotFoundError, match="'nope' is not published.*mlp v1"):
        inference.run("nope", np.zeros((10, 3), np.float32), out)
    with pytest.raises(TensorFormatError, match="do not fit the output buffer"):
        inference.run("mlp", np.zeros((10, 3), np.float32), np.empty((5, 2), np.float32))
    with pytest.raises(TensorFormatError, match=r"\[points, features\]"):
        inference.run("mlp", np.zeros(10, np.float32), out)
    with pytest.raises(ConfigError, match="not valid"):
        inference.run("a:b", np.zeros((10, 3), np.float32), out)
    python = InferenceClient(client, ns, rank=3)
    with pytest.raises(KeyNotFoundError, match="'nope' is not published"):
        python.run("nope", np.zeros((10, 3), np.float32))
    with pytest.raises(TensorFormatError, match="expects float32"):
        python.run("mlp", np.zeros((10, 4), np.float32))
    # the worker survived all of it
    assert inference.run("mlp", np.ones((10, 3), np.float32), out)["version"] == 1


def test_a_dead_worker_is_reported_before_the_timeout(served):
    server, ns, client, _, worker = served
    worker.stop()
    _, inference = native_inference(server, ns, timeout=20.0, heartbeat_check=0.5)
    start = time.monotonic()
    with pytest.raises(WorkerUnavailableError, match="no model worker serves.*nekrs-ml serve"):
        inference.run("mlp", np.zeros((10, 3), np.float32), np.empty((10, 2), np.float32))
    assert time.monotonic() - start < 5
    with pytest.raises(WorkerUnavailableError):
        InferenceClient(client, ns, heartbeat_check=0.5, timeout=20).run(
            "mlp", np.zeros((10, 3), np.float32))


def test_no_worker_and_a_short_timeout_never_hangs(server):
    _, inference = native_inference(server, f"t{uuid.uuid4().hex[:8]}", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(WorkerUnavailableError):
        inference.run("mlp", np.zeros((4, 3), np.float32), np.empty((4, 2), np.float32))
    assert time.monotonic() - start < 3


def cli(env, *argv, check=True):
    result = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", *argv], env=env,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_deploy_models_and_rollback_through_the_cli(served, tmp_path):
    server, ns, client, blobs, worker = served
    scripted(mlp(5), tmp_path / "v2.pt")
    assert '"version": 2' in cli(worker.env, "deploy", str(tmp_path / "v2.pt"), "--name", "mlp").stdout
    listing = cli(worker.env, "models").stdout
    assert '"mlp": 2' in listing and '"double": 1' in listing
    _, inference = native_inference(server, ns)
    inputs = np.ones((8, 3), np.float32)
    out = np.empty((8, 2), np.float32)
    wait_version(inference, inputs, out, 2)
    assert '"version": 1' in cli(worker.env, "rollback", "mlp").stdout
    wait_version(inference, inputs, out, 1)
    np.testing.assert_allclose(out, reference(blobs["mlp"], inputs), rtol=1e-6, atol=1e-6)
    meta = registry.load(client, ns, "mlp", 2)[1]
    assert meta["n_in"] == 3 and meta["n_out"] == 2 and meta["format"] == "torchscript"
    assert meta["origin"] == "deploy:v2.pt" and meta["version"] == 2
    assert "no version older" in cli(worker.env, "rollback", "double", check=False).stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    failed = cli(worker.env, "deploy", str(bad), "--name", "mlp", check=False)
    assert failed.returncode != 0 and "bad.pt is neither a saved torch.export program" in failed.stderr
    assert registry.latest_version(client, ns, "mlp") == 1  # nothing half-published


def wait_version(inference, inputs, out, version, timeout=10.0):
    wait_for(lambda: inference.run("mlp", inputs, out)["version"] == version, timeout,
             f"the worker to switch to v{version}", interval=0.02)


def test_export_programs_are_published_and_served(served, tmp_path):
    server, ns, client, blobs, _ = served
    module = mlp(7).eval()
    program = torch.export.export(module, (torch.zeros(4, 3),),
                                  dynamic_shapes=({0: torch.export.Dim("points")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    version = deploy(client, ns, "exported", tmp_path / "m.pt2")
    assert registry.load(client, ns, "exported", version)[1]["format"] == "export"
    _, inference = native_inference(server, ns)
    inputs = np.random.default_rng(3).normal(size=(100, 3)).astype(np.float32)
    out = np.empty((100, 2), np.float32)
    inference.run("exported", inputs, out)
    with torch.inference_mode():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert f"serving 'exported' v1 on {torch.device(WORKER_DEVICE)}, traced" in served[4].stop()


def test_worker_keeps_freed_memory_unless_the_environment_says_otherwise():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator thresholds are glibc's")
    code = "from nekrs_ml.serve.allocator import keep_freed_memory as k; print(k())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, cwd="/tmp", timeout=60)
    assert tuned.stdout.strip() == "True", tuned.stderr
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(env, MALLOC_TRIM_THRESHOLD_="131072"), cwd="/tmp", timeout=60)
    assert kept.stdout.strip() == "False", kept.stderr


def test_a_cpu_worker_batches_small_requests_and_answers_large_ones_pass_by_pass(server):
    from nekrs_ml.serve.worker import DEFAULT_CPU_BATCH_POINTS, ModelWorker

    client = Client(**server.client_args())
    try:
        cpu = ModelWorker(client, "tpasses", device="cpu")
        assert cpu.max_batch_points == DEFAULT_CPU_BATCH_POINTS == 16384

        def rows(*counts):
            return [np.zeros((n, 1), np.float32) for n in counts]

        small = cpu.passes(rows(*[100] * 10))
        assert small == [slice(0, 10)]  # one pass: their fixed cost dominates
        large = cpu.passes(rows(10000, 6000, 25000, 100, 100))
        assert large == [slice(0, 2), slice(2, 3), slice(3, 5)]
        unlimited = ModelWorker(client, "tpasses", device="cpu", max_batch_points=10 ** 8)
        assert unlimited.passes(rows(25000, 25000, 25000)) == [slice(0, 3)]
    finally:
        client.close()


def test_exported_programs_run_traced_with_activations_in_place():
    import copy

    from nekrs_ml.serve.loading import activations_in_place, as_torchscript

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            h = self.first(x)
            return self.second(torch.nn.functional.silu(h) + h)  # h has two uses

    dim = ({0: torch.export.Dim("points")},)
    mlp_module = torch.export.export(mlp(5).eval(), (torch.zeros(4, 3),), dynamic_shapes=dim).module()
    residual = torch.export.export(Residual().eval(), (torch.zeros(4, 3),), dynamic_shapes=dim).module()
    assert activations_in_place(copy.deepcopy(mlp_module)) == 2
    assert activations_in_place(copy.deepcopy(residual)) == 0  # would overwrite h's other use
    inputs = torch.from_numpy(np.random.default_rng(2).normal(size=(500, 3)).astype(np.float32))
    for module in (mlp_module, residual):
        traced, why = as_torchscript(module, 3, np.dtype(np.float32), torch.device("cpu"))
        assert traced is not None, why
        assert isinstance(traced, torch.jit.ScriptModule)
        with torch.inference_mode():
            torch.testing.assert_close(traced(inputs), module(inputs), rtol=1e-6, atol=1e-6)


def test_wide_inputs_are_traced_on_a_few_rows():
    """An image model's rows are images: its load checks the traced graph on a few of them, not
    hundreds (minutes of a CPU for ResNet-50, beyond the loading heartbeat)."""
    from nekrs_ml.serve.loading import WIDE_INPUT, as_torchscript

    width = WIDE_INPUT + 1
    program = torch.export.export(torch.nn.Linear(width, 2).eval(), (torch.zeros(4, width),),
                                  dynamic_shapes=({0: torch.export.Dim("points")},))
    module = program.module()
    rows_seen = []
    module.register_forward_pre_hook(lambda _, args: rows_seen.append(args[0].shape[0]))
    traced, why = as_torchscript(module, width, np.dtype(np.float32), torch.device("cpu"))
    assert traced is not None, why
    assert rows_seen and max(rows_seen) <= 5, rows_seen
    inputs = torch.rand(7, width)
    with torch.inference_mode():
        torch.testing.assert_close(traced(inputs), module(inputs), rtol=1e-5, atol=1e-5)


def test_exported_control_flow_is_not_traced():
    from nekrs_ml.serve.loading import as_torchscript

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: t * 2.0, lambda t: t - 1.0, (x,))

    program = torch.export.export(Branchy(), (torch.ones(4, 1),),
                                  dynamic_shapes=({0: torch.export.Dim("points")},))
    traced, why = as_torchscript(program.module(), 1, np.dtype(np.float32), torch.device("cpu"))
    assert traced is None and "control flow (cond)" in why


def test_the_heartbeat_stops_while_the_serving_thread_is_stuck_and_after_a_failed_load(
        tcp_server, tmp_path):
    """The heartbeat is beaten beside the serving thread, but only while that thread's loop
    turns: a forward pass that hangs lets it expire (callers see a dead worker), and a failed
    load does not leave the long loading heartbeat behind."""
    from nekrs_ml.serve import worker as worker_module
    from nekrs_ml.serve.worker import HEARTBEAT_TTL, LOADING_TTL, ModelWorker

    ns = f"t{uuid.uuid4().hex[:8]}"
    client = Client(**tcp_server.client_args())
    scripted(doubling(), tmp_path / "double.pt")
    deploy(client, ns, "double", tmp_path / "double.pt")
    worker = ModelWorker(client, ns, device="cpu", reload_interval=0.05, log=lambda text: None)
    release, stuck = threading.Event(), threading.Event()
    forward = worker.forward

    def hanging_forward(model, arrays):
        if arrays[0].shape[0] == 7:  # the request that hangs
            stuck.set()
            release.wait(60)
        return forward(model, arrays)

    worker.forward = hanging_forward
    serving = threading.Thread(target=worker.serve, daemon=True)
    serving.start()
    native, inference = native_inference(tcp_server, ns, timeout=30.0)
    heartbeat = keys.worker_heartbeat(ns, 0)
    try:
        out = np.empty((3, 1), np.float32)
        inference.run("double", np.ones((3, 1), np.float32), out)
        assert np.array_equal(out, np.full((3, 1), 2.0, np.float32))
        ttl = client.redis.pttl(heartbeat)
        assert 0 < ttl <= HEARTBEAT_TTL * 1000

        caller = threading.Thread(target=lambda: _swallow(
            inference.run, "double", np.ones((7, 1), np.float32), np.empty((7, 1), np.float32)))
        caller.start()
        assert stuck.wait(10)
        wait_for(lambda: not client.exists(heartbeat), HEARTBEAT_TTL + 3,
                 "the heartbeat to expire while the serving thread is stuck")
        release.set()
        caller.join(30)
        wait_for(lambda: client.exists(heartbeat), 5, "the heartbeat to come back after the pass")

        # a version that cannot be loaded: the worker keeps serving v1, with a short heartbeat
        client.redis.set(keys.model_blob(ns, "double", 2), b"not a model")
        client.redis.set(keys.model_meta(ns, "double", 2),
                         client.redis.get(keys.model_meta(ns, "double", 1)))
        client.redis.set(keys.model_latest(ns, "double"), 2)
        def refused():
            inference.run("double", np.ones((3, 1), np.float32), out)
            return worker._bad_versions.get("double") == 2
        wait_for(refused, 10, "the worker to refuse v2")
        time.sleep(2 * worker_module.HEARTBEAT_INTERVAL + 0.2)
        ttl = client.redis.pttl(heartbeat)
        assert 0 < ttl <= HEARTBEAT_TTL * 1000 < LOADING_TTL * 1000
        assert inference.run("double", np.ones((3, 1), np.float32), out)["version"] == 1
    finally:
        release.set()
        worker.stop()
        serving.join(30)
        native.close()
        client.close()
    assert not serving.is_alive()


def _swallow(function, *args):
    try:
        function(*args)
    except Exception:  # the caller may time out or see the worker as dead: either is fine here
        pass
