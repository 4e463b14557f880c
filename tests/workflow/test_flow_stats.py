"""Flow statistics (statsInterval): the wall-parallel profiles the coupling streams through the
database, their time average in report.json, profile.png and `nekrs-ml profile`, on the stand-in
solver's synthetic channel, whose mean profile and Reynolds stresses are known."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nekrs_ml import keys
from nekrs_ml.client import Client
from nekrs_ml.launch.flow import FlowStatistics, compare_with_dns, dns_profile, mean_and_uncertainty
from nekrs_ml.orchestrator import Orchestrator
from support.runs import finish, no_servers_left, report, start_run, write_case


RE_TAU, NU = 950.0, 5.2631578947368424e-05
U_TAU = RE_TAU * NU
KARMAN = 0.41


def reichardt(y_plus):
    y_plus = np.asarray(y_plus, dtype=float)
    return (np.log(1 + KARMAN * y_plus) / KARMAN
            + 7.8 * (1 - np.exp(-y_plus / 11) - y_plus / 11 * np.exp(-y_plus / 3)))


def stats_case(run_dir: str, **nekrs_ml) -> Path:
    settings = {"workflow": "train", "statsInterval": 4, "statsStart": 40, "hiddenLayers": 8,
                "stepsPerEpoch": 5, "patience": 3, "stopSolver": "false"}
    settings.update(nekrs_ml)
    return write_case(run_dir, {"NEKRS_ML": settings,
                                "REPRODUCER": {"steps": 600, "points": 100, "stepCost": 0.0}})


# --- the launcher's report on the stand-in ------------------------------------------------------

def test_run_reports_the_known_profile_of_the_synthetic_channel(run_dir):
    code, out = finish(start_run(stats_case(run_dir), run_dir), timeout=240)
    assert code == 0, out
    data = report(run_dir)
    flow = data["flow"]
    statistics = data["solver_summary"]["statistics"]
    # every 4th step from 40 to 600 on both ranks, all received by the launcher
    assert statistics["records"] == (600 - 40) // 4 + 1 == flow["records"]
    assert statistics["records_lost"] == 0 and flow["rejected_records"] == 0
    assert flow["steps"] == [40, 600] and statistics["planes"] == 33
    assert flow["half_height"] == pytest.approx(1.0)
    # u_tau from the resolved wall stress (Reichardt's at the fluctuating sample velocity)
    assert flow["tau_w_from"] == "resolved"
    assert flow["u_tau"] == pytest.approx(U_TAU, rel=0.02)
    assert 0 < flow["u_tau_uncertainty"] < 0.01 * U_TAU
    assert flow["Re_tau"] == pytest.approx(flow["u_tau"] / NU)
    series = flow["series"]  # one point per record
    assert len(series["time"]) == len(series["tau_w"]) == len(series["U_b"]) == flow["records"]
    assert np.mean(series["tau_w"]) == pytest.approx(flow["tau_w"])

    profile = flow["profile"]
    y = np.array(profile["y"])
    assert y[0] == 0.0 and y[-1] == pytest.approx(1.0) and len(y) == 17  # 33 planes folded
    # the synthetic field's known moments (synthetic_channel.hpp), in the true wall units
    d_plus = y * U_TAU / NU
    damping = 1 - np.exp(-d_plus / 26)
    samples = 2 * 2 * 8 * flow["records"]  # ranks x halves x nodes per plane x records
    u_noise = 2 * U_TAU * damping / np.sqrt(samples)
    assert np.all(np.abs(np.array(profile["U"]) - U_TAU * reichardt(d_plus)) <= 5 * u_noise + 1e-12)
    assert np.allclose(np.array(profile["uu"]) / U_TAU ** 2, 4 * damping ** 2, atol=0.4)
    assert np.allclose(np.array(profile["vv"]) / U_TAU ** 2, damping ** 2, atol=0.15)
    assert np.allclose(np.array(profile["uv"]) / U_TAU ** 2, -(1 - y) * damping ** 2, atol=0.15)
    assert np.allclose(profile["U_plus"], np.array(profile["U"]) / flow["u_tau"])
    # the bulk velocity: the volume average of the profile
    assert flow["U_b"] == pytest.approx(0.99, abs=0.02)
    comparison = flow["dns_log_layer"]
    assert comparison["planes"] >= 3 and abs(comparison["mean_relative_difference"]) < 0.05
    assert "profile.png" in data["plots"] and (Path(run_dir) / "profile.png").stat().st_size > 0
    assert f"u_tau {flow['u_tau']:.4g}" in out
    # the coupling's time per step beside the solver's (steps 0 to 600 on each rank)
    timing = data["timing"]
    assert timing == data["solver_summary"]["timing"] and timing["steps"] == 601
    assert timing["coupling_seconds_per_step"] > 0 and timing["solver_seconds_per_step"] > 0
    assert 0 < timing["coupling_fraction"] < 1 and "of the step time" in out
    assert no_servers_left(run_dir)


def test_statistics_are_off_by_default(run_dir):
    case = write_case(run_dir, {"NEKRS_ML": {"workflow": "train", "hiddenLayers": 8,
                                             "stepsPerEpoch": 5, "patience": 3},
                                "REPRODUCER": {"steps": 60, "points": 50, "stepCost": 0.0}})
    code, out = finish(start_run(case, run_dir), timeout=180)
    assert code == 0, out
    data = report(run_dir)
    assert data["solver_summary"]["statistics"] is None
    assert data["flow"] is None and "profile.png" not in data["plots"]


def test_profile_command_draws_a_run_beside_a_baseline(run_dir, tmp_path):
    first, second = os.path.join(run_dir, "a"), os.path.join(run_dir, "b")
    os.makedirs(first)
    case = write_case(first, {"NEKRS_ML": {"workflow": "train", "statsInterval": 10,
                                           "hiddenLayers": 8, "stepsPerEpoch": 5, "patience": 3},
                              "REPRODUCER": {"steps": 200, "points": 50, "stepCost": 0.0}})
    code, out = finish(start_run(case, first), timeout=180)
    assert code == 0, out
    shutil.copytree(first, second)  # the baseline: another run's directory
    output = tmp_path / "both.png"
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "profile", first, "--baseline",
                           second, "--output", str(output)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert output.stat().st_size > 0
    # a directory without a profile: the error names report.json and the key to set
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "report.json").write_text(json.dumps({"flow": None}))
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "profile",
                           str(tmp_path / "empty")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "report.json" in proc.stderr and "statsInterval" in proc.stderr


# --- the records in the database ----------------------------------------------------------------

def test_records_are_capped_when_nobody_drains_them(run_dir):
    """Without a launcher (the solver under the user's own mpiexec) the list keeps the newest
    FLOW_STATS_RETAINED records."""
    case = stats_case(run_dir, statsInterval=1, statsStart=0)
    case.write_text(case.read_text().replace("steps = 600", f"steps = {keys.FLOW_STATS_RETAINED + 150}"))
    orchestrator = Orchestrator(os.path.join(run_dir, "db"))
    info = orchestrator.start()
    try:
        env = dict(os.environ, **info["env"])
        proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "nekrs_ml.cli",
                               "reproduce", str(case)], env=env, cwd=run_dir,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client = Client(**_connection(info))
        ns = info["env"].get("NEKRS_ML_NAMESPACE", "nkml")
        key = keys.flow_stats(ns)
        assert client.list_length(key) == keys.FLOW_STATS_RETAINED
        newest = json.loads(client.list_range(key, -1, -1)[0])
        assert newest["step"] == keys.FLOW_STATS_RETAINED + 150
        stats = FlowStatistics()
        assert stats.drain(client, ns, batch=64) == keys.FLOW_STATS_RETAINED
        assert stats.records == keys.FLOW_STATS_RETAINED and client.list_length(key) == 0
        client.close()
    finally:
        orchestrator.stop()


def _connection(info) -> dict:
    from nekrs_ml import environment

    return environment.connection_options(info["env"])


# --- the time average ----------------------------------------------------------------------------

def record(step, y, moments, tau=1e-3):
    return {"step": step, "time": step * 0.1, "kinematic_viscosity": 1e-3,
            "tau_w_applied": None, "tau_w_resolved": tau,
            "wall_area": 2.0, "y": list(y), "moments": [list(row) for row in moments]}


def uniform_moments(y, u, v, weight=1.0):
    """Moments of one node per plane with velocity (u, v, 0)."""
    return [[weight, weight * a, weight * b, 0.0, weight * a * a, weight * b * b, 0.0,
             weight * a * b] for a, b in zip(u, v)]


def test_halves_fold_with_v_pointing_away_from_the_nearer_wall():
    y = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    u = np.array([0.0, 1.0, 1.2, 1.0, 0.0])
    # v away from the lower wall below the centre, toward the upper wall above it: folded, both
    # halves move away from their wall
    v = np.array([0.0, 0.1, 0.0, -0.1, 0.0])
    stats = FlowStatistics()
    stats.add(record(1, y, uniform_moments(y, u, v)))
    stats.add(record(2, y, uniform_moments(y, u + 0.2, v)))
    result = stats.result(nu=None)  # the records' viscosity: a run summary may be lost
    profile = result["profile"]
    assert profile["y"] == [0.0, 0.5, 1.0]
    assert profile["U"] == pytest.approx([0.1, 1.1, 1.3])
    assert profile["uu"] == pytest.approx([0.01, 0.01, 0.01])  # (±0.1)^2 between the records
    assert profile["uv"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert result["u_tau"] == pytest.approx(np.sqrt(1e-3))
    assert result["Re_tau"] == pytest.approx(np.sqrt(1e-3) * 1.0 / 1e-3)


def test_bad_records_are_counted_and_left_out():
    y = [-1.0, 0.0, 1.0]
    good = uniform_moments(y, [0, 1, 0], [0, 0, 0])
    stats = FlowStatistics()
    stats.add(record(1, y, good))
    stats.add(record(2, [-1.0, 0.1, 1.0], good))  # other planes
    stats.add(record(3, y, [[float("nan")] * 8] * 3))  # a non-finite field
    stats.add({"step": 4})  # malformed
    stats.add(record(5, y, good[:2]))  # wrong shape
    assert stats.records == 1 and stats.rejected == 4


def test_uncertainty_of_the_mean_from_batch_means():
    rng = np.random.default_rng(3)
    values = 1.0 + 0.1 * rng.standard_normal(4000)
    mean, error = mean_and_uncertainty(values)
    assert mean == pytest.approx(1.0, abs=0.01)
    assert error == pytest.approx(0.1 / np.sqrt(4000), rel=0.5)
    assert mean_and_uncertainty([1.0, 2.0, 3.0]) == (2.0, None)


def test_dns_profile_and_log_layer_comparison():
    y_plus, u_plus = dns_profile()
    assert y_plus[0] < 1 and y_plus[-1] > 990 and np.all(np.diff(y_plus) > 0)
    assert np.interp(np.log(100), np.log(y_plus), u_plus) == pytest.approx(16.4, abs=0.2)
    log_law = np.log(np.array([150.0, 300.0])) / KARMAN + 5.2
    comparison = compare_with_dns({"y_plus": [1.0, 150.0, 300.0, 900.0],
                                   "U_plus": [1.0, *log_law, 22.0]})
    assert comparison["planes"] == 2 and abs(comparison["mean_relative_difference"]) < 0.03
    assert compare_with_dns({"y": [0.1]}) is None
