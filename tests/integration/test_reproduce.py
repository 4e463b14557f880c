"""The stand-in solver under mpiexec: its data are bit-identical for the same seed."""

import json
import os
import subprocess
import sys

from nekrs_ml.orchestrator import Orchestrator
from support.runs import write_case



def reproduce(run_dir: str, seed: int, env: dict) -> dict:
    case = write_case(run_dir, {"NEKRS_ML": {"maxSnapshots": 100},
                                "REPRODUCER": {"steps": 50, "points": 500, "stepCost": 0.0, "seed": seed}})
    summary = os.path.join(run_dir, f"summary-{seed}.json")
    proc = subprocess.run(
        ["mpiexec", "-n", "2", sys.executable, "-m", "nekrs_ml.cli", "reproduce", str(case),
         "--summary", summary], env=env, cwd=run_dir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(summary) as handle:
        return json.load(handle)


def test_same_seed_gives_identical_data(run_dir):
    orch = Orchestrator(os.path.join(run_dir, "db"))
    info = orch.start()
    try:
        env = dict(os.environ, **info["env"])
        first, second, other = (reproduce(run_dir, 1, env), reproduce(run_dir, 1, env),
                                reproduce(run_dir, 2, env))
    finally:
        orch.stop()
    assert first["data_digest"] == second["data_digest"]
    assert first["data_digest"] != other["data_digest"]
    assert first["snapshots_written"] == 2 * 5 and first["steps"] == 50
