"""The launcher's progress line in a log file (stdout not a terminal): lines that say
something, not a page of repeats."""

import pytest

from nekrs_ml import launch


def test_a_log_gets_changes_and_rare_repeats(monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(launch.time, "monotonic", lambda: clock[0])
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
