"""The launcher's progress line in a log file (stdout not a terminal): lines that say
something, not a page of repeats."""

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
