"""`nekrs-ml run` end to end: real redis-server, real MPI ranks (2 solver + 1 trainer), real
torch training; and what happens when a part dies or the database is full."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nekrs_ml.orchestrator import Orchestrator
from support.runs import CASE, SOLVER_STARTED, TRAINER_STARTED, TRAIN_INFER, finish, kill_during_run, no_servers_left, processes_matching, report, start_run, write_case
from support.waiting import wait_for

def test_online_training_reaches_the_accuracy_target(run_dir):
    start = time.monotonic()
    code, out = finish(start_run(CASE, run_dir), timeout=300)
    elapsed = time.monotonic() - start
    assert code == 0, out[-3000:]
    data = report(run_dir)
    assert data["status"] == "ok"
    assert data["model_version"] >= 1
    err = data["tau_w_rel_error"]
    assert err["median"] <= 0.02 and err["p95"] <= 0.05, err
    assert data["solver_summary"]["snapshots_written"] > 0
    for plot in ("loss.png", "tau_w.png"):
        assert (Path(run_dir) / plot).stat().st_size > 1000
    assert elapsed < 180, f"the demo run took {elapsed:.0f} s"
    assert no_servers_left(run_dir)


def test_killed_trainer_lets_the_solver_finish(run_dir):
    case = write_case(run_dir, {"REPRODUCER": {"steps": 600, "stepCost": 0.02}})
    code, out, trainer_pids = kill_during_run(case, run_dir, TRAINER_STARTED, " train ")
    assert trainer_pids
    data = report(run_dir)
    assert data["status"] == "trainer" and code == 3, out[-2000:]
    assert any("trainer exited" in w for w in data["warnings"])
    assert data["solver_summary"]["steps"] == 600  # the solver ran to its end
    assert no_servers_left(run_dir)


def test_killed_solver_stops_the_trainer(run_dir):
    case = write_case(run_dir, {"REPRODUCER": {"steps": 20000}})
    code, out, _ = kill_during_run(case, run_dir, TRAINER_STARTED, " reproduce ", timeout=120)
    data = report(run_dir)
    assert data["status"] == "solver" and code == 1, out[-2000:]
    assert not list(processes_matching(" train ", run_dir))
    assert no_servers_left(run_dir)


@pytest.mark.parametrize("policy", ["drop", "wait"])
def test_full_database_never_crashes_the_solver(run_dir, policy):
    case = write_case(run_dir, {
        "NEKRS_ML": {"workflow": "train", "maxMemory": "3mb", "whenFull": policy, "waitTimeout": 0.2,
                     "trainerRanks": 1},
        "REPRODUCER": {"steps": 200, "points": 20000, "stepCost": 0.0}})
    code, out = finish(start_run(case, run_dir, "--trainer-grace", "5"), timeout=240)
    data = report(run_dir)
    summary = data["solver_summary"]
    assert summary is not None and summary["steps"] == 200, out[-3000:]
    assert summary["snapshots_dropped"] > 0
    assert no_servers_left(run_dir)


@pytest.mark.parametrize("settings,expected", [
    ({}, ["2 hosts", "deployment = single", "db start --bind"]),
    ({"deployment": "cluster", "dbNodes": 2}, ["dbNodes = 2 on 2 hosts"]),
    ({"deployment": "colocated", "workflow": "train+infer", "trainerNodes": 1},
     ["trainerNodes = 1 on 2 hosts", "trainerNodes = 0"]),
    ({"deployment": "colocated", "workflow": "infer", "inferenceBackend": "inprocess"},
     ["inferenceBackend = worker"]),
    ({"deployment": "colocated", "workflow": "infer"}, ["needs deployModel"]),
    ({"deployment": "colocated", "trainerRanks": 2},
     ["is not one of the allocation's", "node-a, node-b"]),
])
def test_allocations_of_several_hosts_that_cannot_be_placed_are_refused(run_dir, settings,
                                                                         expected):
    node_file = Path(run_dir) / "nodefile"
    node_file.write_text("node-a\nnode-a\nnode-b\n")  # this host is not in it
    case = write_case(run_dir, {"NEKRS_ML": settings})
    proc = subprocess.run(
        [sys.executable, "-m", "nekrs_ml.cli", "run", str(case), "--run-dir", run_dir],
        cwd=run_dir, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PBS_NODEFILE=str(node_file)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert no_servers_left(run_dir)


def test_train_and_infer_uses_the_newest_version_at_each_step(run_dir):
    steps = 1200
    case = write_case(run_dir, {"REPRODUCER": {"steps": steps}}, base=TRAIN_INFER)
    code, out = finish(start_run(case, run_dir), timeout=300)
    assert code == 0, out[-3000:]
    inference = report(run_dir)["inference"]
    # 2 ranks, every step from step 0 on
    assert inference["calls"] + inference["waiting_calls"] == 2 * (steps + 1)
    segments = inference["version_by_step"]
    versions = [version for _, _, version in segments]
    assert len(versions) >= 2 and versions == sorted(versions), segments
    assert segments[-1][1] == steps
    assert all(later[0] > earlier[1] for earlier, later in zip(segments, segments[1:]))
    assert inference["tau_w_rel_error_final"]["median"] < 0.02
    assert (Path(run_dir) / "worker0.log").read_text().count("serving 'wall_model'") >= 2
    assert no_servers_left(run_dir)


@pytest.mark.parametrize("deployment,workers", [("single", 1), ("colocated", 1), ("cluster", 2)])
def test_infer_runs_a_deployed_model_file(run_dir, deployment, workers):
    import torch

    model_file = Path(run_dir) / "tau_model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(model_file))
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer", "deployModel": f'"{model_file}"',
                                             "deployment": deployment, "workers": workers},
                                "REPRODUCER": {"steps": 200}})
    code, out = finish(start_run(case, run_dir), timeout=180)
    assert code == 0, out[-3000:]
    assert f"deployed {model_file}" in out
    for index in range(workers):  # each worker served its share of the 2 ranks' 402 calls
        log = (Path(run_dir) / f"worker{index}.log").read_text()
        assert f"stopped after {402 // workers} requests" in log, log
    inference = report(run_dir)["inference"]
    assert inference["calls"] == 402 and inference["waiting_calls"] == 0
    assert inference["fallbacks"] == 0
    assert inference["version_by_step"] == [[0, 200, 1]]
    assert no_servers_left(run_dir)


def test_infer_without_a_model_fails_before_the_solver_starts(run_dir):
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer"}, "REPRODUCER": {"steps": 50}})
    code, out = finish(start_run(case, run_dir), timeout=120)
    assert code != 0
    assert "workflow = infer needs a model" in out and "deployModel" in out
    assert not (Path(run_dir) / "solver.log").exists()
    assert no_servers_left(run_dir)


def test_a_killed_worker_ends_the_run_cleanly_after_max_inference_failures(run_dir):
    import torch

    model_file = Path(run_dir) / "tau_model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(model_file))
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer", "deployModel": f'"{model_file}"',
                                             "inferenceTimeout": 1, "maxInferenceFailures": 5,
                                             "sampleInterval": 10, "maxWorkerRestarts": 0},
                                "REPRODUCER": {"steps": 5000, "stepCost": 0.01}})
    code, out, _ = kill_during_run(case, run_dir, SOLVER_STARTED, " serve ", settle=2)
    data = report(run_dir)
    assert data["status"] == "inference" and code == 5, out[-3000:]
    assert "maxInferenceFailures" in data["message"]
    inference = data["inference"]
    failures = inference["failures"]
    assert failures["worker_unavailable"] + failures["timeout"] >= 2 * 5  # both ranks
    assert inference["fallbacks"] == sum(failures.values())
    assert data["solver_summary"]["ended_early"] == "inference_failures"
    assert data["solver_summary"]["steps"] < 5000
    assert data["worker_restarts"]["worker0"]["restarts"] == 0
    assert any("not restarted (maxWorkerRestarts = 0 reached)" in w for w in data["warnings"])
    assert no_servers_left(run_dir)


def test_a_killed_worker_is_restarted_and_the_run_ends_ok(run_dir):
    """The worker is stateless: the launcher starts it again while the solver bridges on the
    fallback wall law, and the run ends ok with the restart counted."""
    import torch

    model_file = Path(run_dir) / "tau_model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(model_file))
    steps = 500
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer", "deployModel": f'"{model_file}"',
                                             "inferenceTimeout": 1, "maxInferenceFailures": 30},
                                "REPRODUCER": {"steps": steps, "stepCost": 0.01}})
    code, out, killed = kill_during_run(case, run_dir, SOLVER_STARTED, " serve ", settle=1)
    assert killed
    data = report(run_dir)
    assert data["status"] == "ok" and code == 0, out[-3000:]
    restarts = data["worker_restarts"]["worker0"]
    assert restarts["restarts"] == 1 and restarts["exit_codes"] == [-signal.SIGKILL], restarts
    took = restarts["serving_again_after_s"]
    assert len(took) == 1 and took[0] < 30, restarts
    print(f"the restarted worker served again {took[0]:.1f} s after its restart")
    assert "worker0 serves again" in out and "1 model worker restart(s)" in out
    inference = data["inference"]
    assert 0 < inference["fallbacks"] < 2 * 30  # bridged, never maxInferenceFailures in a row
    assert data["solver_summary"]["steps"] == steps and not data["solver_summary"].get("ended_early")
    assert inference["version_by_step"][-1][1] == steps  # answered by the model again at the end
    log = (Path(run_dir) / "worker0.log").read_text()
    assert log.count("nekrs-ml serve: worker 0 on cpu") == 2 and "serving 'wall_model'" in log, log
    assert no_servers_left(run_dir)


def trainer_state(run_dir: str):
    """The state of the trainer's last status line (trainer_history.jsonl), None before it."""
    path = Path(run_dir) / "trainer_history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    try:
        return json.loads(lines[-1]).get("state") if lines else None
    except ValueError:  # a line being written
        return None


def test_a_stopped_trainer_drops_data_loudly(run_dir):
    """SIGSTOP of the trainer mid-run: the drops are warned about as they happen and in the
    last line, and beyond maxDropFraction the run is not ok."""
    case = write_case(run_dir, {"NEKRS_ML": {"maxSnapshots": 5, "maxDropFraction": 0.1},
                                "REPRODUCER": {"steps": 550, "stepCost": 0.02}})
    proc = start_run(case, run_dir)
    stopped = []
    try:
        # stopped while it trains: drops count against maxDropFraction only then
        wait_for(lambda: trainer_state(run_dir) == "training", 120, "the trainer to train")
        stopped = [int(pid) for pid in processes_matching(" train ", run_dir)]
        assert stopped
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(6)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        code, out = finish(proc, timeout=180)
    finally:
        for pid in stopped:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    data = report(run_dir)
    assert data["status"] == "data_dropped" and code == 8, out[-3000:]
    drops = data["drops"]
    assert drops["dropped_while_training"] > 0 and drops["fraction"] > 0.1, drops
    assert "maxDropFraction = 0.1" in data["message"]
    warned = [w for w in data["warnings"] if "snapshot(s) dropped" in w]
    assert warned and "maxSnapshots" in warned[0], data["warnings"]
    assert f"warning: {warned[0]}" in out  # said while the run went on
    last = [line for line in out.splitlines() if line.startswith("nekrs-ml run: data_dropped")]
    assert last and "snapshots dropped" in last[0], out[-2000:]
    assert data["solver_summary"]["steps"] == 550  # the solver itself never waited
    assert no_servers_left(run_dir)


def test_report_names_the_sampling_window(run_dir):
    """sampleStart = 100 on a 300-step run: the solver streams steps 100..300 only, and
    report.json says so for the solver (snapshots.window) and the trainer (trainer.data_window)."""
    case = write_case(run_dir, {"NEKRS_ML": {"sampleStart": 100, "minSnapshots": 10},
                                "REPRODUCER": {"steps": 300, "stepCost": 0.005}})
    code, out = finish(start_run(case, run_dir), timeout=240)
    assert code == 0, out[-3000:]
    data = report(run_dir)
    assert data["status"] == "ok"
    streamed = data["snapshots"]
    assert streamed["written"] == 2 * len(range(100, 301, 10))  # 2 solver ranks
    assert (streamed["window"]["first_step"], streamed["window"]["last_step"]) == (100, 300)
    assert streamed["window"]["sample_start"] == 100
    trained = data["trainer"]["data_window"]
    assert trained["first_step"] >= 100 and trained["last_step"] <= 300
    assert trained["first_time"] == pytest.approx(trained["first_step"] * 1e-3)
    assert 0 < trained["snapshots"] == data["trainer"]["snapshots"] <= streamed["written"]
    assert data["trainer_last"]["data_window"] == trained
    assert no_servers_left(run_dir)


def test_a_run_that_ends_before_its_sampling_window_says_so(run_dir):
    case = write_case(run_dir, {"NEKRS_ML": {"sampleStart": 1000},
                                "REPRODUCER": {"steps": 100, "stepCost": 0.005}})
    code, out = finish(start_run(case, run_dir), timeout=240)
    data = report(run_dir)
    assert code != 0 and data["status"] == "trainer", out[-3000:]
    assert data["snapshots"]["written"] == 0 and data["snapshots"]["window"]["first_step"] is None
    error = data["trainer_last"]["error"]  # the trainer's own message (its status)
    assert "received no training data" in error
    assert "sampling window (sampleStart, sampleStartTime)" in error
    assert no_servers_left(run_dir)


NEKRS_ML_SECTION = "[NEKRS_ML]\nworkflow = train\n"


@pytest.mark.parametrize("general, message", [
    ("stopAt = elapsedTime\nelapsedTime = 10",
     "stopAt = elapsedTime without endTime or numSteps: NekRS 25 then skips time stepping"),
    ("stopAt = endTime\nnumSteps = 10", "stopAt = endTime but no endTime"),
    ("stopAt = numSteps\nendTime = 10", "stopAt = numSteps but no numSteps"),
    ("polynomialOrder = 7", "has no end condition"),
])
def test_a_nekrs_case_without_a_usable_end_condition_is_refused(run_dir, general, message):
    case = Path(run_dir) / "case.par"
    case.write_text(f"[GENERAL]\n{general}\n\n{NEKRS_ML_SECTION}")
    code, out = finish(start_nekrs_run(case, run_dir), timeout=60)
    assert code != 0 and message in out and f"{case}: [GENERAL]" in out, out
    assert not (Path(run_dir) / "db").exists() and not (Path(run_dir) / "solver.log").exists()


@pytest.mark.parametrize("general", ["stopAt = elapsedTime\nelapsedTime = 10\nendTime = 1e9",
                                     "stopAt = elapsedTime\nelapsedTime = 10\nnumSteps = 100",
                                     "stopAt = endTime\nendTime = 50", "numSteps = 20"])
def test_usable_nekrs_end_conditions_pass_the_check(tmp_path, general):
    from nekrs_ml.launch.nekrs_case import check_end_condition

    case = tmp_path / "case.par"
    case.write_text(f"[GENERAL]\n{general}\n\n{NEKRS_ML_SECTION}")
    check_end_condition(case)  # no error


def write_cmake_cache(case_dir: Path, built_in: Path) -> Path:
    """The CMakeCache.txt NekRS's udf build leaves in <case>/.cache/udf, made in `built_in`."""
    udf = case_dir / ".cache" / "udf"
    udf.mkdir(parents=True)
    (udf / "CMakeCache.txt").write_text(
        f"# For build in directory: {built_in}\nCMAKE_BUILD_TYPE:STRING=Release\n"
        f"CMAKE_CACHEFILE_DIR:INTERNAL={built_in}\nCMAKE_HOME_DIRECTORY:INTERNAL={built_in}\n")
    return udf / "CMakeCache.txt"


def test_a_nekrs_case_copied_with_its_cache_is_refused(run_dir, tmp_path):
    case_dir = Path(run_dir) / "copied_case"
    case_dir.mkdir()
    case = case_dir / "case.par"
    case.write_text(f"[GENERAL]\nnumSteps = 20\n\n{NEKRS_ML_SECTION}")
    stale = write_cmake_cache(case_dir, tmp_path / "original_case" / ".cache" / "udf")
    code, out = finish(start_nekrs_run(case, run_dir), timeout=60)
    assert code != 0, out
    assert f"{stale} was created in {tmp_path / 'original_case'}" in out, out
    assert f"rm -rf {case_dir / '.cache'}" in out, out
    assert not (Path(run_dir) / "db").exists() and not (Path(run_dir) / "solver.log").exists()


def test_a_nekrs_cache_built_in_place_passes_the_check(tmp_path):
    from nekrs_ml.launch.nekrs_case import check_cache

    write_cmake_cache(tmp_path, tmp_path / ".cache" / "udf")
    check_cache(tmp_path)  # no error


def start_nekrs_run(case: Path, run_dir: str) -> subprocess.Popen:
    """`nekrs-ml run --solver nekrs` (refused before NekRS is looked for: no NEKRS_HOME needed)."""
    env = {k: v for k, v in os.environ.items() if k != "NEKRS_HOME"}
    return subprocess.Popen(
        [sys.executable, "-m", "nekrs_ml.cli", "run", str(case), "--solver", "nekrs",
         "--run-dir", run_dir], cwd=run_dir, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.parametrize("general, expected", [
    ("stopAt = numSteps\nnumSteps = 20\ndt = 1e-3", (20, None)),
    ("numSteps = 20", (20, None)),
    ("stopAt = endTime\nendTime = 2\ndt = 1e-3", (2000, 2.0)),
    ("stopAt = endTime\nendTime = 50\ndt = targetCFL=1 + max=2e-2", (None, 50.0)),
    ("polynomialOrder = 7", (None, None)),
])
def test_the_progress_line_knows_a_nekrs_cases_length(tmp_path, general, expected):
    from nekrs_ml.launch import nekrs_run_length

    par = tmp_path / "case.par"
    par.write_text(f"[GENERAL]\n{general}\n\n[VELOCITY]\nnumSteps = 99\n")
    assert nekrs_run_length(par) == expected


def test_inference_run_deploys_the_training_runs_model(run_dir):
    """The two commands of a case README, in one case directory: the training run (default run
    directory runs/<par stem>) leaves <modelName>.pt there, and the inference case's deployModel
    names it relative to its .par; nothing else to do in between."""
    case_dir = Path(run_dir)
    train = write_case(run_dir, {"REPRODUCER": {"steps": 300, "stepCost": 0.005}})
    train = train.rename(case_dir / "train.par")
    infer = write_case(run_dir, {"NEKRS_ML": {"workflow": "infer",
                                              "deployModel": '"runs/train/wall_model.pt"'},
                                 "REPRODUCER": {"steps": 100}})
    infer = infer.rename(case_dir / "infer.par")
    try:
        for par in (train, infer):
            proc = subprocess.Popen(
                [sys.executable, "-m", "nekrs_ml.cli", "run", par.name, "--solver", "reproducer"],
                cwd=case_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            code, out = finish(proc, timeout=300)
            assert code == 0, out[-3000:]
            if par is train:
                summary = json.loads((case_dir / "runs" / "train" / "trainer.json").read_text())
                model = case_dir / "runs" / "train" / "wall_model.pt"
                assert summary["model_file"] == str(model) and model.stat().st_size > 0
                metadata = json.loads(model.with_suffix(".json").read_text())
                assert metadata["version"] == summary["model_version"] >= 1
        assert f"deployed {model}" in out
        inference = report(str(case_dir / "runs" / "infer"))["inference"]
        assert inference["calls"] == 202 and inference["waiting_calls"] == 0
        assert inference["version_by_step"] == [[0, 100, 1]]
        assert inference["fallbacks"] == 0
    finally:
        for stem in ("train", "infer"):
            Orchestrator.stop_dir(case_dir / "runs" / stem / "db")
    assert no_servers_left(run_dir)
