"""The launcher's progress line in a log file (stdout not a terminal): lines that say
something, not a page of repeats."""

import pytest

from nekrs_ml import launch


def test_a_log_gets_changes_and_rare_repeats(monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(launch.progress.time, "monotonic", lambda: clock[0])
    progress = launch.Progress(total_steps=40)
    progress.tty = False
    status = {"state": "waiting"}

    def tick(seconds, step):
        clock[0] += seconds
        progress.show(step, None, 0, status)

    tick(0, 0)                      # first line
    for _ in range(11):
        tick(6, 0)                  # over a minute of the same line (the solver builds)
    tick(6, 10)                     # progress: printed at once
    tick(1, 20)                     # too soon after the last line
    tick(5, 20)                     # printed
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[1].split()[1] for line in lines] == ["0/40", "0/40", "10/40", "20/40"]


def test_the_final_line_names_the_momentum_balance(tmp_path, capsys):
    from nekrs_ml.launch import summarise

    data = {"status": "ok", "wall_stress": {"momentum_balance": {
        "tau_w_measured": 2.24e-3, "tau_w_implied": 2.1e-3}}}
    summarise(data, tmp_path)
    line = capsys.readouterr().out
    assert "wall shear stress 2.240e-03 against 2.100e-03 from the momentum balance" in line
    summarise({"status": "ok", "wall_stress": None}, tmp_path)  # the stand-in: nothing to say
    assert "momentum" not in capsys.readouterr().out


def test_flow_statistics_from_the_summary():
    from nekrs_ml.launch.report import flow_statistics

    summary = {"kinematic_viscosity": 1 / 19000, "wall_stress": {
        "area": 4.0, "applied": {"mean": [2.5e-3, 0, 0]},
        "momentum_balance": {"tau_w_measured": 2.5e-3, "tau_w_implied": 2.4e-3, "volume": 4.0,
                             "bulk_velocity": [0.98, 1.0], "time": [25.0, 60.0]}}}
    flow = flow_statistics(summary)
    assert flow["u_tau"] == pytest.approx(0.05) and flow["Re_tau"] == pytest.approx(950)
    assert flow["U_b"] == 1.0 and flow["half_height"] == 1.0 and flow["tau_w_from"] == "applied"
    assert flow_statistics({"wall_stress": None}) is None  # the stand-in
    assert flow_statistics(None) is None


def test_the_progress_line_of_an_inference_run_shows_the_model_in_use(capsys):
    progress = launch.Progress(total_steps=100)
    progress.tty = False
    progress.show(50, None, 0, {}, {"version": 3, "calls": 200, "predicted": 150,
                                   "waiting_for": None})
    line = capsys.readouterr().out
    assert "solver uses v3  predicted 75% of 200 calls" in line and "snapshots" not in line
    progress.last_print = -1e9
    waiting = ("wall_model v1: waiting for the cuda package of its graph 0123 for torch 2.13.0 "
               "(compiling for 42 s on node7; ...)")
    progress.show(60, None, 4, {"epoch": 2, "state": "training"},
                  {"version": 0, "calls": 10, "predicted": 0, "waiting_for": waiting})
    line = capsys.readouterr().out
    assert "epoch 2" in line and "solver uses v-  predicted 0% of 10 calls" in line
    assert "waiting: wall_model v1: waiting for the cuda package" in line and len(line) < 400


INFERENCE = {"calls": 0, "waiting_calls": 6002, "predicted_calls": 0, "fallbacks": 0,
             "applied": True, "failures": {"timeout": 0}, "versions": [], "final_version": None,
             "waiting_for": "wall_model v1: waiting for the cuda package of its graph G"}


@pytest.mark.parametrize("workflow", ["infer", "train+infer"])
def test_a_run_whose_solver_applied_no_prediction_is_not_ok(workflow):
    from nekrs_ml.launch.report import model_outcome, model_use_text

    status, why = model_outcome("ok", workflow, INFERENCE)
    assert status == "no_model" and "6002 inference calls waited" in why
    assert "waiting for the cuda package" in why
    failed = dict(INFERENCE, calls=10, waiting_calls=0, fallbacks=10, failures={"timeout": 10})
    status, why = model_outcome("ok", workflow, failed)
    assert status == "no_model" and "timeout 10" in why
    assert model_use_text(INFERENCE) == "no model applied (wall law at every step)"
    # not asked to apply, or another failure already named: unchanged
    assert model_outcome("ok", workflow, dict(INFERENCE, applied=False)) == ("ok", "")
    assert model_outcome("solver", workflow, INFERENCE) == ("solver", "")
    assert model_outcome("ok", "train", None) == ("ok", "")


def test_the_last_line_says_on_how_many_steps_the_model_was_applied(tmp_path, capsys):
    from nekrs_ml.launch import summarise

    partial = dict(INFERENCE, calls=3660, waiting_calls=2342, predicted_calls=3660,
                   versions=[1, 34], final_version=34, waiting_for=None)
    summarise({"status": "ok", "trainer": {"model_version": 35}, "inference": partial}, tmp_path)
    line = capsys.readouterr().out
    assert "trained model v35" in line and "models v1-v34 applied on 61% of steps, wall law before" in line
    summarise({"status": "no_model", "trainer": {"model_version": 34}, "inference": INFERENCE,
               "message": "the solver never applied the model"}, tmp_path)
    captured = capsys.readouterr()
    assert "no_model; trained model v34; no model applied (wall law at every step)" in captured.out
    everywhere = dict(partial, waiting_calls=0, versions=[2], final_version=2)
    summarise({"status": "ok", "inference": everywhere}, tmp_path)
    assert "ok; model v2 applied at every step" in capsys.readouterr().out


def test_a_flow_block_from_a_handful_of_records_is_marked_not_meaningful(tmp_path, capsys):
    from nekrs_ml.launch import summarise
    from nekrs_ml.launch.flow import FlowStatistics

    flow = FlowStatistics()
    flow.records, flow.steps, flow.times = 3, [10, 20, 30], [0.1, 0.2, 0.3]
    flow.tau_applied, flow.tau_resolved, flow.bulk_velocity = [2.5e-3] * 3, [], [1.0] * 3
    result = flow.result(1 / 19000)
    assert result["statistically_meaningful"] is False and "3 flow-statistics record(s)" in result["caveat"]
    summarise({"status": "ok", "flow": result}, tmp_path)
    assert "u_tau 0.05 (not statistically meaningful" in capsys.readouterr().out


def test_drops_outside_training_are_said_to_be_by_design(tmp_path, capsys):
    from nekrs_ml.launch import summarise

    drops = {"dropped_while_training": 0, "streamed_while_training": 52, "fraction": 0.0,
             "max_fraction": 0.5}
    summarise({"status": "ok", "snapshots": {"written": 600, "dropped": 498}, "drops": drops},
              tmp_path)
    assert "498 of 600 snapshots dropped (none while the trainer trained)" in capsys.readouterr().out
    summarise({"status": "data_dropped", "snapshots": {"written": 600, "dropped": 498},
               "drops": dict(drops, dropped_while_training=40, fraction=40 / 52)}, tmp_path)
    assert "(77% of those streamed while the trainer trained; maxDropFraction 0.5)" in \
        capsys.readouterr().out
