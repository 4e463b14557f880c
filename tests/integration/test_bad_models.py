"""Bad models contained, against a real server and real `nekrs-ml serve` workers: `deploy` refuses
models that fail on realistic inputs, a worker rolls back from a new version that fails on its
first batch, and the registry keeps only the newest keepVersions versions."""

import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from nekrs_ml import _core, keys
from nekrs_ml.models import registry
from nekrs_ml.client import Client
from nekrs_ml.errors import ConfigError, ServerError
from nekrs_ml.models.deploy import deploy
from support.waiting import wait_for
from support.workers import Worker, heartbeat, mlp, scripted



class RaisesOnLargeInputs(torch.nn.Module):
    """Fine on zeros (the old probe), broken on the velocities a wall model sees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 1.0).any()):
            raise RuntimeError("input out of the trained range")
        return x[:, :2] * 2.0


class NanOnNegativeInputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x[:, :2])


class DropsRows(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1, :2]


@pytest.fixture
def namespace_client(tcp_server):
    client = Client(**tcp_server.client_args())
    try:
        yield f"t{uuid.uuid4().hex[:8]}", client
    finally:
        client.close()


def cli(env, *argv):
    return subprocess.run([sys.executable, "-m", "nekrs_ml.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module,words", [
    (RaisesOnLargeInputs(), re.escape("a forward pass on float32[64, 3] (values in [-50, 50]) "
                                      "failed (") + ".*input out of the trained range"),
    (NanOnNegativeInputs(), "non-finite outputs \\(NaN or Inf\\) for [0-9]+ of 64 probe rows"),
    (DropsRows(), "returned \\(1, 2\\) for float32\\[64, 3\\].*one row per input row"),
], ids=["raises", "nan", "rows"])
def test_deploy_refuses_models_that_fail_on_realistic_inputs(tcp_server, namespace_client,
                                                              tmp_path, module, words):
    ns, client = namespace_client
    path = tmp_path / "bad.pt"
    scripted(module, path)
    with pytest.raises(ConfigError, match=re.escape(f"model file {path}: ") + words):
        deploy(client, ns, "wall", path, n_in=3)
    assert registry.models(client, ns) == {}  # nothing published
    assert registry.versions(client, ns, "wall") == []


def test_deploy_checks_the_outputs_the_user_expects(tcp_server, namespace_client, tmp_path):
    ns, client = namespace_client
    path = tmp_path / "three.pt"
    scripted(mlp(1, n_in=3, n_out=3), path)
    with pytest.raises(ConfigError, match=f"{path}: returns 3 outputs per point, expected 2"):
        deploy(client, ns, "wall", path, n_out=2)
    assert registry.latest_version(client, ns, "wall") is None
    assert deploy(client, ns, "wall", path, n_out=3) == 1
    env = {**os.environ, **tcp_server.info["env"], "NEKRS_ML_NAMESPACE": ns}
    refused = cli(env, "deploy", str(path), "--name", "wall", "--outputs", "2")
    assert refused.returncode != 0 and "returns 3 outputs per point, expected 2" in refused.stderr
    listing = cli(env, "models")
    assert listing.returncode == 0 and '"wall": 1' in listing.stdout  # no new version


def test_worker_rolls_back_from_a_version_that_fails_on_its_first_batch(tcp_server,
                                                                         namespace_client,
                                                                         tmp_path):
    ns, client = namespace_client
    scripted(mlp(0), tmp_path / "good.pt")
    assert deploy(client, ns, "mlp", tmp_path / "good.pt") == 1
    worker = Worker(tcp_server, ns)
    try:
        native = _core.Client(**tcp_server.client_args())
        inference = _core.InferenceClient(native, ns, 0, 1, 10.0, 1.0)
        inputs = np.random.default_rng(0).uniform(-2, 2, (16, 3)).astype(np.float32)
        out = np.empty((16, 2), np.float32)
        assert inference.run("mlp", inputs, out)["version"] == 1
        expected = out.copy()
        # a version the probe of `deploy` would refuse, published as a trainer could
        for bad in (RaisesOnLargeInputs(), NanOnNegativeInputs()):
            blob = scripted(bad, tmp_path / "bad.pt")
            version = registry.publish(client, ns, "mlp", blob, {"n_in": 3, "n_out": 2})
            def rolled_back():  # every call answered by v1, before and after the rollback
                reply = inference.run("mlp", inputs, out)
                assert reply["version"] == 1
                np.testing.assert_array_equal(out, expected)
                return heartbeat(client, ns).get("refused", {}).get("mlp") == version
            wait_for(rolled_back, 10, f"the worker to try v{version} and roll it back")
            for _ in range(3):  # and after it
                assert inference.run("mlp", inputs, out)["version"] == 1
                np.testing.assert_array_equal(out, expected)
            assert registry.latest_version(client, ns, "mlp") == version  # not retried
        scripted(mlp(3), tmp_path / "v4.pt")
        assert deploy(client, ns, "mlp", tmp_path / "v4.pt") == 4
        wait_for(lambda: inference.run("mlp", inputs, out)["version"] == 4, 10,
                 "the worker to switch to v4", interval=0.02)
    finally:
        log = worker.stop()
    for version in (2, 3):
        assert (f"'mlp' v{version} failed on its first batch" in log
                and "rolled back to v1, the last version that worked" in log), log
    assert "serving 'mlp' v4" in log


def test_registry_keeps_the_newest_versions_and_the_pinned_one(namespace_client):
    ns, client = namespace_client
    for _ in range(3):
        registry.publish(client, ns, "m", b"blob", {"n_in": 1, "n_out": 1}, keep_versions=2)
    assert registry.versions(client, ns, "m") == [2, 3]
    assert registry.rollback(client, ns, "m") == 2  # pinned from now on
    for _ in range(3):
        registry.publish(client, ns, "m", b"blob", {"n_in": 1, "n_out": 1}, export_blob=b"x",
                         keep_versions=2)
    assert registry.versions(client, ns, "m") == [2, 5, 6]
    for gone in (1, 3, 4):
        for key in (keys.model_blob(ns, "m", gone), keys.model_meta(ns, "m", gone),
                    keys.model_export(ns, "m", gone)):
            assert not client.exists(key), key
    assert registry.load(client, ns, "m", 2)[0] == b"blob"


def test_a_small_server_is_not_filled_by_the_registry(tmp_path):
    """Publishing 40 versions of 1 MB into a 16 MB server: pruning keeps it from filling up;
    without pruning the refusal names maxMemory and keepVersions."""
    from nekrs_ml.orchestrator import Orchestrator

    blob = bytes(1 << 20)
    with Orchestrator(tmp_path / "db", maxmemory="16mb").started() as orch:
        client = Client(orch.addresses, password=orch.password)
        try:
            for _ in range(40):
                registry.publish(client, "kv", "m", blob, {"n_in": 1, "n_out": 1},
                                 keep_versions=3)
            assert registry.versions(client, "kv", "m") == [38, 39, 40]
            with pytest.raises(ServerError, match="raise maxMemory or lower keepVersions "
                                                  "\\(now 100\\)"):
                for _ in range(40):
                    registry.publish(client, "kv", "m", blob, {"n_in": 1, "n_out": 1},
                                     keep_versions=100)
        finally:
            client.close()


def test_the_trainer_publishes_with_the_cases_keep_versions(tmp_path):
    from types import SimpleNamespace

    from nekrs_ml.train.settings import Settings

    par = tmp_path / "case.par"
    par.write_text("[NEKRS_ML]\nkeepVersions = 3\n")
    args = SimpleNamespace(par=str(par), run_dir=str(tmp_path), data_timeout=1.0, resume=False)
    assert Settings.from_args(args).keep_versions == 3
    par.write_text("[NEKRS_ML]\n")
    assert Settings.from_args(args).keep_versions == registry.DEFAULT_KEEP_VERSIONS == 10
