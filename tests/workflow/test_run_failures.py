"""`nekrs-ml run` names the part that failed: a case error before anything starts, and the
orchestrator when its redis-server dies or freezes during the run (not the solver whose calls then fail)."""

import os
import signal
from pathlib import Path

import pytest

from nekrs_ml.orchestrator import Orchestrator, pid_alive
from support.runs import finish, no_servers_left, processes_matching, report, start_run, write_case
from support.waiting import wait_for



@pytest.mark.parametrize("sig,state", [(signal.SIGKILL, "exited"), (signal.SIGSTOP, "stopped")],
                         ids=["killed", "frozen"])
def test_a_dead_server_is_reported_as_the_orchestrator(run_dir, sig, state):
    case = write_case(run_dir, {"NEKRS_ML": {"timeout": 2},
                                "REPRODUCER": {"steps": 20000, "stepCost": 0.01}})
    proc = start_run(case, run_dir)
    servers = []
    try:
        wait_for(lambda: (Path(run_dir) / "trainer_history.jsonl").exists(), 120,
                 "the trainer to start")
        servers = [server for state in Orchestrator.states(Path(run_dir) / "db")
                   for server in state.servers]
        assert servers
        for server in servers:
            os.kill(server.pid, sig)
        code, out = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for server in servers:  # never leave a frozen server behind, even on failure
            if pid_alive(server.pid):
                os.kill(server.pid, signal.SIGKILL)
    data = report(run_dir)
    assert data["status"] == "orchestrator" and code == 4, out[-3000:]
    assert "the database failed: redis-server" in data["message"]
    assert f"pid {servers[0].pid}, {state}" in data["message"]
    for part in (" reproduce ", " train "):
        assert not list(processes_matching(part, run_dir)), part
    assert no_servers_left(run_dir)


def test_a_case_without_the_section_fails_before_anything_starts(run_dir):
    case = Path(run_dir) / "case.par"
    case.write_text("[GENERAL]\nnumSteps = 10\n\n[REPRODUCER]\nsteps = 10\n")
    code, out = finish(start_run(case, run_dir), timeout=120)
    assert code != 0
    assert f"{case}: no [NEKRS_ML] section; add one to the case file" in out, out
    assert not (Path(run_dir) / "db").exists() and not (Path(run_dir) / "solver.log").exists()
