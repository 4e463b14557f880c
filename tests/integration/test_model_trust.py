"""Reading a model never runs code: a torch.export file (or registry version) that torch would
unpickle to read (pickled weights or constants, sample inputs that are not plain tensors,
compiled AOTInductor code) is refused by `nekrs-ml deploy` and by the model workers before
torch reads it, and a trainer checkpoint is read with weights_only. Each crafted file would run
`os.system` when loaded by torch.export.load / torch.load as nekrs_ml used to."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nekrs_ml import _core
from nekrs_ml.models import aot, registry
from nekrs_ml.client import Client
from nekrs_ml.errors import ConfigError
from nekrs_ml.models.deploy import deploy
from nekrs_ml.train import checkpoints
from support.workers import Worker



class RunsCode:
    """A pickle that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def exported(model=None) -> bytes:
    model = model or torch.nn.Linear(3, 2)
    program = torch.export.export(model, (torch.randn(4, 3),),
                                  dynamic_shapes=({0: torch.export.Dim("points")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


class WithConstant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.offset = torch.tensor([0.5, -0.5])  # a constant (not a parameter nor buffer)

    def forward(self, x):
        return self.linear(x) + self.offset


def rewrite(blob: bytes, change) -> bytes:
    """The archive with change(entry name, bytes) -> bytes (or None to keep) applied."""
    source = zipfile.ZipFile(io.BytesIO(blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(info.filename, change(info.filename, data) or data)
    return out.getvalue()


def pickled_weight(marker: Path) -> bytes:
    def change(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(RunsCode(marker))
    return rewrite(exported(), change)


def pickled_constant(marker: Path) -> bytes:
    def change(name, data):
        if name.endswith("model_constants_config.json"):
            config = json.loads(data)
            config["config"]["offset"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/constants/tensor_0"):
            return pickle.dumps(RunsCode(marker))
    return rewrite(exported(WithConstant()), change)


def pickled_sample_inputs(marker: Path) -> bytes:
    def change(name, data):
        if name.endswith("data/sample_inputs/model.pt"):
            buffer = io.BytesIO()
            torch.save(RunsCode(marker), buffer)  # weights_only refuses it; torch falls back
            return buffer.getvalue()
    return rewrite(exported(), change)


def compiled_code(marker: Path) -> bytes:
    blob = exported()
    out = io.BytesIO(blob)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr("archive/data/aotinductor/model/model.so", b"\x7fELF not really")
    return out.getvalue()


CRAFTED = {"pickled-weight": (pickled_weight, "marks 'weight' use_pickle"),
           "pickled-constant": (pickled_constant, "marks 'offset' use_pickle"),
           "pickled-sample-inputs": (pickled_sample_inputs, "sample inputs"),
           "compiled-code": (compiled_code, "compiled AOTInductor code")}


@pytest.mark.parametrize("craft", CRAFTED, ids=list(CRAFTED))
def test_deploy_refuses_a_program_that_would_run_code_when_read(tcp_server, tmp_path, craft):
    make, expected = CRAFTED[craft]
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(make(marker))
    ns = f"t{uuid.uuid4().hex[:8]}"
    client = Client(**tcp_server.client_args())
    try:
        with pytest.raises(aot.UnsafeModelError) as refused:
            deploy(client, ns, "wall", path)
        assert registry.latest_version(client, ns, "wall") is None
    finally:
        client.close()
    assert not marker.exists(), "loading the model ran its code"
    assert f"model file {path}: " in str(refused.value) and expected in str(refused.value)
    assert "never loads a model whose reading would unpickle" in str(refused.value)


def test_the_deploy_command_says_why_it_refuses(tcp_server, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(pickled_weight(marker))
    env = {**os.environ, **tcp_server.info["env"], "NEKRS_ML_NAMESPACE": f"t{uuid.uuid4().hex[:8]}"}
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "deploy", str(path), "--name",
                           "wall"], env=env, capture_output=True, text=True, timeout=120)
    assert not marker.exists(), "loading the model ran its code"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"nekrs-ml deploy: error: model file {path}: " in proc.stderr, proc.stderr
    assert "marks 'weight' use_pickle" in proc.stderr and "torch.export.save" in proc.stderr


def test_plain_programs_still_load(tmp_path):
    for model in (torch.nn.Linear(3, 2), WithConstant()):
        program = aot.load_program(exported(model))
        assert program.module()(torch.zeros(1, 3)).shape == (1, 2)


def test_a_worker_never_runs_code_from_a_registry_version(tcp_server, tmp_path):
    """A client that can write the registry (any client of a --smartredis server) publishes a
    crafted version: the worker refuses to load it and keeps serving the version before."""
    ns = f"t{uuid.uuid4().hex[:8]}"
    client = Client(**tcp_server.client_args())
    good = tmp_path / "good.pt2"
    good.write_bytes(exported())
    assert deploy(client, ns, "mlp", good) == 1
    worker = Worker(tcp_server, ns)
    marker = tmp_path / "ran"
    try:
        native = _core.Client(**tcp_server.client_args())
        inference = _core.InferenceClient(native, ns, 0, 1, 10.0, 1.0)
        inputs = np.zeros((4, 3), np.float32)
        out = np.empty((4, 2), np.float32)
        assert inference.run("mlp", inputs, out)["version"] == 1
        registry.publish(client, ns, "mlp", pickled_weight(marker),
                         {"n_in": 3, "n_out": 2, "format": "export"})
        time.sleep(0.5)  # several reload intervals: the worker sees v2
        for _ in range(3):
            assert inference.run("mlp", inputs, out)["version"] == 1
    finally:
        log = worker.stop()
        client.close()
    assert not marker.exists(), "the worker ran the model's code"
    assert "marks 'weight' use_pickle" in log, log


def test_a_checkpoint_is_read_without_unpickling(tmp_path):
    marker = tmp_path / "ran"
    directory = tmp_path / "checkpoints"
    directory.mkdir(mode=0o700)
    torch.save({"epoch": 3, "payload": RunsCode(marker)}, directory / "checkpoint_3.pt")
    with pytest.raises(ConfigError, match="checkpoint_3.pt is not a checkpoint of this version"):
        checkpoints.load_latest(directory)
    assert not marker.exists()
