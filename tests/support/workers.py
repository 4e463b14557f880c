"""Model workers (`nekrs-ml serve` processes) on a test server, and small TorchScript models."""

import json
import os
import subprocess
import sys

import torch

from nekrs_ml import keys
from nekrs_ml.client import Client

from .waiting import wait_for


def scripted(module: torch.nn.Module, path) -> bytes:
    module = torch.jit.script(module.eval())
    torch.jit.save(module, str(path))
    return path.read_bytes()


def mlp(seed: int, n_in: int = 3, hidden: int = 64, n_out: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.SiLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                               torch.nn.Linear(hidden, n_out))


# The model workers' device: cpu here; a GPU machine runs this file with cuda:0 as well.
WORKER_DEVICE = os.environ.get("NEKRS_ML_TEST_WORKER_DEVICE", "cpu")


class Worker:
    """A `nekrs-ml serve` process on the test server, in its own namespace."""

    def __init__(self, server, ns: str, *extra):
        self.ns = ns
        self.env = {**os.environ, **server.info["env"], "NEKRS_ML_NAMESPACE": ns}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nekrs_ml.cli", "serve", "--threads", "1", "--device",
             WORKER_DEVICE, "--reload-interval", "0.05", *extra],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = Client(**server.client_args())

        def started():
            assert self.process.poll() is None, self.process.communicate()[0]
            return client.exists(keys.worker_heartbeat(ns, 0))
        try:
            wait_for(started, 60, "the worker to start")
        finally:
            client.close()

    def stop(self) -> str:
        """Stops the worker (once); its output."""
        if getattr(self, "output", None) is not None:
            return self.output
        if self.process.poll() is None:
            self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.output = out
        return out


def heartbeat(client: Client, ns: str, worker: int = 0) -> dict:
    """The worker's heartbeat ({} before its first): loaded and refused versions, counters."""
    beat = client.redis.get(keys.worker_heartbeat(ns, worker))
    return json.loads(beat) if beat else {}
