"""`bench inference --models resnet50`: the benchmark's ResNet-50 answers through a model worker
what torch answers for the same image, and the benchmark's records carry their fields (one rank,
one image, one call: a ResNet-50 forward takes ~0.1-0.3 s per image on one CPU core)."""

import json
import subprocess
import sys
import uuid

import numpy as np
import torch

from nekrs_ml.bench import inference as bench_inference
from nekrs_ml.bench import resnet
from nekrs_ml.client import Client
from nekrs_ml.inference import InferenceClient
from nekrs_ml.models.deploy import deploy
from support.workers import Worker


def test_resnet50_is_torchvision_sized_and_the_worker_answers_its_forward(tcp_server, tmp_path):
    model = resnet.resnet50()
    assert resnet.parameter_count(model) == 25_557_032  # torchvision's resnet50()
    path = tmp_path / "resnet50.pt"
    path.write_bytes(resnet.program_blob(torchscript=True))  # the form the worker path serves
    ns = f"rn{uuid.uuid4().hex[:8]}"
    client = Client(**tcp_server.client_args())
    worker = None
    try:
        deploy(client, ns, "resnet50", path, n_in=resnet.IMAGE_FEATURES)
        worker = Worker(tcp_server, ns)
        image = np.random.default_rng(7).uniform(0.0, 1.0, (1, resnet.IMAGE_FEATURES))
        image = image.astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(image)).numpy()
        assert expected.shape == (1, resnet.CLASSES)
        # the first call waits for the worker to load the 100 MB model
        answer = InferenceClient(client, ns, rank=0, timeout=120.0).run("resnet50", image)
        assert answer.outputs.shape == (1, resnet.CLASSES)
        np.testing.assert_allclose(answer.outputs, expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())
        assert not np.allclose(answer.outputs, 0.0)  # a model that answers something
    finally:
        if worker is not None:
            worker.stop()
        client.close()


def test_resnet50_records(tmp_path):
    output = tmp_path / "records.json"
    proc = subprocess.run(
        [sys.executable, "-m", "nekrs_ml.cli", "bench", "inference", "--models", "resnet50",
         "--paths", "worker", "--ranks", "1", "--calls", "1", "--images", "1", "--devices", "cpu",
         "--worker-threads", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    assert "38-40 ms per call" in proc.stdout  # the published figure beside ours
    records = json.loads(output.read_text())
    assert len(records) == 1
    record = records[0]
    assert {"model", "path", "ranks", "device", "p50_us", "p99_us", "mean_us", "calls_per_s",
            "images", "images_per_s", "served_form", "reference", "machine"} == set(record)
    assert (record["model"], record["path"], record["ranks"], record["images"]) == \
        ("resnet50", "worker", 1, 1)
    assert record["p99_us"] >= record["p50_us"] > 0
    assert record["images_per_s"] == record["calls_per_s"] > 0
    assert record["reference"]["per_call_ms"] == [38.0, 40.0]
    assert record["reference"]["compare_with"] == "per_call_ms"
    assert len(record["machine"]["load_average_at_start"]) == 3


def test_resnet50_options_are_checked():
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "bench", "inference",
                           "--models", "resnet50", "--images", "0"],
                          capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert proc.returncode != 0 and "--images must be at least 1" in proc.stderr, proc.stderr
    assert bench_inference.rows_per_call("resnet50", _Args(points=25000, images=3)) == 3
    assert bench_inference.rows_per_call("mlp_1_20_1", _Args(points=25000, images=3)) == 25000


class _Args:
    def __init__(self, **values):
        self.__dict__.update(values)
