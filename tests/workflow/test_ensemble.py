"""Ensembles (docs/ensembles.md): several stand-in solver runs feed the trainers of several models
live through one database, each member gets the model back, and the failures of one part leave
the others' data: the demo case as shipped, a member that crashes under each memberFailure policy
(with a slow member and a late one beside it), and a model whose trainer stops reading."""

import os
import signal
import time
from pathlib import Path

import pytest

from support.runs import (CASES, assert_nothing_left, finish, processes_matching, report,
                          start_run)
from support.waiting import wait_for

ENSEMBLE = CASES / "reproducer" / "ensemble.par"

SMALL = """
[NEKRS_ML]
workflow = {workflow}
solverRanks = 1
trainerRanks = 1
sampleInterval = 10
sampleHeight = 0.1
maxSnapshots = 5
whenFull = drop
modelName = a
workers = 1
hiddenLayers = 16
batchSize = 256
stepsPerEpoch = 10
publishInterval = 1
patience = 1000
maxEpochs = 100000
minSnapshots = 5

[REPRODUCER]
steps = {steps}
points = 300
stepCost = 0.01

[ENSEMBLE]
members = m1, slow, late
models = {models}
memberFailure = {policy}

[MEMBER m1]
reproducer.reTau = 550

[MEMBER slow]
reproducer.reTau = 950
reproducer.stepCost = 0.02

[MEMBER late]
reproducer.reTau = 1400
reproducer.steps = 200
startDelay = 3
"""


def small_case(run_dir: str, policy="continue", models="a", workflow="train", steps=800) -> Path:
    path = Path(run_dir) / "ensemble.par"
    path.write_text(SMALL.format(policy=policy, models=models, workflow=workflow, steps=steps))
    return path


def test_the_demo_ensemble_as_shipped(run_dir):
    """Three members train a wall-units model and a dimensional one at once, every member applies
    the wall-units model, and the held-out Re_tau = 2000 member tells the two apart."""
    started = time.monotonic()
    code, out = finish(start_run(ENSEMBLE, run_dir), timeout=900)
    assert code == 0, out[-4000:]
    data = report(run_dir)
    assert data["status"] == "ok", data["message"]
    ensemble = data["ensemble"]
    members, models = ensemble["members"], ensemble["models"]
    assert set(members) == {"re550", "re950", "re1400", "re2000"}
    for name, block in members.items():
        assert block["status"] == "finished", (name, block)
        assert block["steps"] == 2000 and block["snapshots"]["written"] > 0, block
        # every member applied the model it infers with, held-out one included
        assert block["inference"]["predicted_calls"] > 0, (name, block["inference"])
        assert block["flow"] and block["plots"], name
    assert models["wall_model"]["features"] == "wall_units"
    assert models["dimensional"]["features"] == "dimensional"
    for model in models.values():
        assert model["version"] and set(model["members"]) == {"re550", "re950", "re1400"}
    for name in ("re550", "re950", "re1400"):
        error = members[name]["tau_w_rel_error"]["wall_model"]
        assert error["median"] < 0.02 and error["p95"] < 0.05, (name, error)
    held_out = ensemble["held_out"]["re2000"]
    assert held_out["wall_model"]["median"] < 0.02 and held_out["wall_model"]["p95"] < 0.05, held_out
    assert held_out["dimensional"]["median"] > 2 * held_out["wall_model"]["median"], held_out
    assert "ensemble of 4 members" in out and "re2000 (held out)" in out
    assert_nothing_left(run_dir, time.monotonic())
    assert time.monotonic() - started < 900


def member_pid(run_dir: str, member: str):
    found = list(processes_matching(f"members/{member}/case.par", run_dir))
    return int(found[0]) if found else None


@pytest.mark.parametrize("policy", ["continue", "abort"])
def test_a_member_that_crashes(run_dir, policy):
    """m1's solver is killed mid-run; a slow member and a late one run beside it."""
    proc = start_run(small_case(run_dir, policy), run_dir, "--trainer-grace", "5")
    try:
        pid = wait_for(lambda: member_pid(run_dir, "m1"), 120, "member m1's solver")
        wait_for(lambda: (Path(run_dir) / "members" / "m1" / "solver.log").stat().st_size > 0,
                 60, "m1's first output")
        time.sleep(2)  # mid-run: m1 has streamed
        os.kill(pid, signal.SIGKILL)
        code, out = finish(proc, timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    data = report(run_dir)
    members = data["ensemble"]["members"]
    assert members["m1"]["status"] == "failed" and members["m1"]["exit_code"] != 0
    assert "member m1 failed" in out
    if policy == "continue":
        assert code == 9 and data["status"] == "member", (code, out[-3000:])
        assert members["slow"]["status"] == members["late"]["status"] == "finished", members
        assert members["late"]["steps"] == 200 and members["late"]["start_delay_s"] == 3
        # the model was trained on the others' data and the failed member's first snapshots
        assert data["ensemble"]["models"]["a"]["version"], data["ensemble"]["models"]
        assert "not finished: m1 failed" in out
    else:
        assert code == 1 and data["status"] == "solver", (code, out[-3000:])
        assert "memberFailure = abort" in data["message"]
        assert "stopped" in {members["slow"]["status"], members["late"]["status"]}, members
    assert_nothing_left(run_dir, time.monotonic())


def test_a_model_whose_trainer_stops_reading(run_dir):
    """Model b's trainer is frozen for a while: model a goes on reading every snapshot, b's
    entries wait for it up to maxSnapshots, and what b missed is counted for b alone."""
    proc = start_run(small_case(run_dir, models="a, b", steps=1500), run_dir,
                     "--trainer-grace", "5")
    try:
        history = Path(run_dir) / "models" / "b" / "trainer_history.jsonl"
        wait_for(lambda: history.exists() and history.stat().st_size > 0, 180,
                 "model b's first epoch")
        frozen = [int(pid) for pid in processes_matching("models/b/case.par", run_dir)]
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(6)  # the scenario: b reads nothing for 6 s while the members stream
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        code, out = finish(proc, timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, out[-3000:]
    models = report(run_dir)["ensemble"]["models"]
    assert models["b"]["dropped"] > (models["a"]["dropped"] or 0) + 20, models
    assert models["a"]["version"] and models["b"]["version"]
    assert "model b missed" in out
    assert_nothing_left(run_dir, time.monotonic())


def test_ctrl_c_twice_stops_every_member_and_trainer(run_dir):
    """Ctrl-C, and another one while stopping: exit 130, every part of every member gone, and
    the report says which members were stopped."""
    proc = start_run(small_case(run_dir, models="a, b", steps=3000), run_dir)
    try:
        wait_for(lambda: member_pid(run_dir, "slow") and member_pid(run_dir, "m1"), 180,
                 "the members' solvers")
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        code, out = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130, out[-3000:]
    data = report(run_dir)
    assert data["status"] == "interrupted"
    statuses = {name: block["status"] for name, block in data["ensemble"]["members"].items()}
    assert statuses["m1"] == statuses["slow"] == "stopped", statuses
    assert_nothing_left(run_dir, time.monotonic())

