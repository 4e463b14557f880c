"""The NekRS adapter (udf/nekrs/) compiled as a case compiles it — the case .udf included into
udf.cpp, built with CMake and the nekrs_ml udf.cmake against the installed package — but
against the stand-in NekRS 25.x headers of tests/support/nekrs_stub/ instead of a NekRS installation,
and run by a stand-in NekRS executable under mpiexec (1 and 2 ranks) against a real
redis-server, a real trainer-side reader and a real `nekrs-ml serve` worker.

The stand-in mesh is a channel box per rank (2 x 2 x 2 elements of order 2 on
x in [2r, 2r + 2], y in [-1, 1], z in [0, 2]; walls y = -1 and y = +1 with boundary ID 1,
NekRS's face tangents: t1 = +x on the bottom wall, -x on the top wall, t2 = +z on both). Its
"solver" sets the velocity (1 + t) * U0 with
    U0 = (a (1 - y^2) + e z,  c x,  b (1 - y^2) + g y),
so that the inputs at the sample points and the wall shear stress are known exactly here.
The wall-model BC function (udf/nekrs/wall_model.okl) is compiled as C++ (25.x and 24.x
bcData) and compared with nekrs_ml::wall_model_traction; the stand-in NekRS also runs it on its
wall faces after the last step (as the next step's boundary kernel would), so that the traction
the BC applies is checked against the predicted stress vector end to end. Needs cmake, mpicxx
and mpiexec."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch

from nekrs_ml import _core, keys
from nekrs_ml.client import Client
from nekrs_ml.launch import report
from nekrs_ml.models.deploy import deploy
from nekrs_ml.train.data import SnapshotReader
from support.workers import Worker


STUB = Path(__file__).resolve().parents[1] / "support" / "nekrs_stub"

# The stand-in run: velocity coefficients, viscosity (rho = 1), time step, sample height.
FIELD = {"a": 1.0, "c": 0.2, "e": 0.1, "b": 0.5, "g": 0.3}
MU = 1e-3
DT = 0.1
HEIGHT = 0.1
# The stand-in box per rank (tests/support/nekrs_stub/include/nekrs_stub.hpp, BoxSpec defaults).
ELEMENTS = (2, 2, 2)
X_LENGTH, Z_LENGTH = 2.0, 2.0
GLL_ORDER_2 = (-1.0, 0.0, 1.0)
# Wall frames as NekRS gives them: t1, t2 and the inward normal n (into the fluid).
FRAMES = {
    "bottom": (np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0, 1.0, 0])),
    "top": (np.array([-1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0, -1.0, 0])),
}
WALL_Y = {"bottom": -1.0, "top": 1.0}
WALL_POINTS_PER_RANK = 2 * ELEMENTS[0] * ELEMENTS[2] * len(GLL_ORDER_2) ** 2
# trainingNodes = interior: the nodes off the face edges (N = 2: the face centre)
INTERIOR_POINTS_PER_RANK = 2 * ELEMENTS[0] * ELEMENTS[2] * (len(GLL_ORDER_2) - 2) ** 2


# --- build ----------------------------------------------------------------------------------------
def missing_tools() -> Optional[str]:
    for tool in ("cmake", "mpicxx", "mpiexec"):
        if not shutil.which(tool):
            return (f"{tool} is not installed (the NekRS stand-in test needs cmake, mpicxx and "
                    "mpiexec)")
    return None


def nekrs_ml_config(flag: str) -> str:
    return subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "config", flag], check=True,
                          capture_output=True, text=True, cwd="/tmp").stdout.strip()


@pytest.fixture(scope="session")
def stub_build(tmp_path_factory) -> Path:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("nekrs-stub-build")
    configure = subprocess.run(
        ["cmake", "-S", str(STUB), "-B", str(build),
         f"-Dnekrs_ml_DIR={nekrs_ml_config('--cmake-dir')}",
         f"-DNEKRS_ML_UDF_CMAKE={nekrs_ml_config('--udf-cmake')}"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    # udf.cmake told the NekRS version from the stand-in's header layout
    assert "nekrs_ml: NekRS 25.x API" in configure.stdout
    compile_ = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True,
                              text=True)
    assert compile_.returncode == 0, compile_.stdout[-5000:] + compile_.stderr[-5000:]
    return build


# --- the analytic field ---------------------------------------------------------------------------
def velocity(x, y, z, t):
    s = 1.0 + t
    a, c, e, b, g = (FIELD[k] for k in "acebg")
    return np.stack([s * (a * (1 - y * y) + e * z), s * c * x + 0 * y,
                     s * (b * (1 - y * y) + g * y)], -1)


def velocity_gradient(y, t):
    """grad[a][b] = d u_a / d x_b at height y (it does not depend on x, z)."""
    s = 1.0 + t
    a, c, e, b, g = (FIELD[k] for k in "acebg")
    return s * np.array([[0, -2 * a * y, e], [c, 0, 0], [0, -2 * b * y + g, 0]])


def expected_inputs(wall: str, x, z, t) -> np.ndarray:
    """[u.t1, u.t2, u.n] at the sample point x_wall + h n of the wall points (x, z)."""
    t1, t2, n = FRAMES[wall]
    y = WALL_Y[wall] + HEIGHT * n[1]
    u = velocity(np.asarray(x, float), np.full(np.shape(x), y), np.asarray(z, float), t)
    return np.stack([u @ t1, u @ t2, u @ n], -1)


def expected_targets(wall: str, t) -> np.ndarray:
    """[tau.t1, tau.t2], tau = 2 mu S n minus its normal part (the stress on the wall)."""
    t1, t2, n = FRAMES[wall]
    grad = velocity_gradient(WALL_Y[wall], t)
    tau = MU * (grad + grad.T) @ n
    tau -= (tau @ n) * n
    return np.array([tau @ t1, tau @ t2])


def wall_face_nodes(rank: int, nodes_kind: str = "all") -> Counter:
    """(x, z) of every wall point of one wall of a rank: one per node of every wall face
    (nodes_kind = "interior": only those off the face edges)."""
    nodes = Counter()
    hx, hz = X_LENGTH / ELEMENTS[0], Z_LENGTH / ELEMENTS[2]
    inner = GLL_ORDER_2[1:-1] if nodes_kind == "interior" else GLL_ORDER_2
    for ex in range(ELEMENTS[0]):
        for ez in range(ELEMENTS[2]):
            for r in inner:
                for q in inner:
                    x = rank * X_LENGTH + ex * hx + (r + 1) / 2 * hx
                    z = ez * hz + (q + 1) / 2 * hz
                    nodes[(round(2 * x), round(2 * z))] += 1  # grid of spacing 0.5
    return nodes


def locate_rows(inputs: np.ndarray, t: float):
    """Wall and (x, z) of each snapshot row, recovered from its inputs: the sign of u.t1 tells
    the wall (u > 0 and t1 = +x / -x), u.n = +-c x gives x, u.t1 gives z."""
    s = 1.0 + t
    a, c, e = FIELD["a"], FIELD["c"], FIELD["e"]
    y_sample = 1.0 - HEIGHT
    walls = np.where(inputs[:, 0] > 0, "bottom", "top")
    sign = np.where(walls == "bottom", 1.0, -1.0)
    x = sign * inputs[:, 2] / (s * c)
    z = (sign * inputs[:, 0] / s - a * (1 - y_sample ** 2)) / e
    return walls, x, z


def check_snapshot(inputs: np.ndarray, targets: np.ndarray, rank: int, t: float,
                   dtype=np.float32, nodes_kind: str = "interior") -> None:
    assert inputs.dtype == dtype and targets.dtype == dtype
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    rows = WALL_POINTS_PER_RANK if nodes_kind == "all" else INTERIOR_POINTS_PER_RANK
    assert inputs.shape == (rows, 3) and targets.shape == (rows, 2)
    walls, x, z = locate_rows(inputs.astype(np.float64), t)
    np.testing.assert_allclose(2 * x, np.round(2 * x), atol=1e-4, err_msg="x off the wall nodes")
    np.testing.assert_allclose(2 * z, np.round(2 * z), atol=1e-4, err_msg="z off the wall nodes")
    x, z = np.round(2 * x) / 2, np.round(2 * z) / 2
    for wall in FRAMES:
        rows = walls == wall
        grid = zip(np.round(2 * x[rows]).astype(int).tolist(),
                   np.round(2 * z[rows]).astype(int).tolist())
        seen = Counter(grid)
        assert seen == wall_face_nodes(rank, nodes_kind), \
            f"{wall} wall: not one row per {nodes_kind} wall face node"
        np.testing.assert_allclose(inputs[rows], expected_inputs(wall, x[rows], z[rows], t),
                                   rtol=rtol, atol=rtol / 10, err_msg=f"{wall} wall inputs")
        expected = np.tile(expected_targets(wall, t), (rows.sum(), 1))
        np.testing.assert_allclose(targets[rows], expected,
                                   rtol=rtol, atol=rtol * 1e-4, err_msg=f"{wall} wall targets")


# --- running the stand-in NekRS -------------------------------------------------------------------
@dataclass
class StubRun:
    returncode: int
    output: str
    ranks: List[dict] = field(default_factory=list)  # rank<R>.json of each rank that finished

    def assert_ok(self) -> None:
        assert self.returncode == 0, self.output[-6000:]

    def wall_nodes(self, wall_ranks=None):
        """(wall, x, z, usrwrk fields 0 and 1 [n, 2]) of the volume nodes on the walls of
        `wall_ranks` (all)."""
        rows = []
        for result in self.selected(wall_ranks):
            y, x, z = (np.array(result[c]) for c in "yxz")
            usrwrk = np.stack([result["usrwrk0"], result["usrwrk1"]], axis=1)
            for wall, wall_y in WALL_Y.items():
                on = np.abs(y - wall_y) < 1e-12
                rows.append((wall, x[on], z[on], usrwrk[on]))
        return rows

    def off_wall_usrwrk(self, wall_ranks=None) -> np.ndarray:
        """usrwrk fields 0 and 1 of the volume nodes that are not wall nodes."""
        values = []
        for result in self.ranks:
            y = np.array(result["y"])
            usrwrk = np.stack([result["usrwrk0"], result["usrwrk1"]], axis=1)
            if wall_ranks is not None and result["rank"] not in wall_ranks:
                values.append(usrwrk)
            else:
                values.append(usrwrk[np.abs(np.abs(y) - 1) > 1e-12])
        return np.concatenate(values)

    def wall_bc(self, wall_ranks=None):
        """(wall, x, z, traction [n, 3], surface weight) of the wall face nodes of
        `wall_ranks` (all), as the stand-in's boundary kernel applied the BC after the last
        step."""
        rows = []
        for result in self.selected(wall_ranks):
            bc = {k: np.array(v) for k, v in result["wall_bc"].items()}
            traction = np.stack([bc["tx"], bc["ty"], bc["tz"]], axis=1)
            for wall, wall_y in WALL_Y.items():
                on = np.abs(bc["y"] - wall_y) < 1e-12
                rows.append((wall, bc["x"][on], bc["z"][on], traction[on], bc["weight"][on]))
        return rows

    def selected(self, wall_ranks=None) -> List[dict]:
        return [r for r in self.ranks if wall_ranks is None or r["rank"] in wall_ranks]


def write_par(path: Path, settings: Dict[str, object]) -> Path:
    lines = ["[GENERAL]", "polynomialOrder = 2", "", "[NEKRS_ML]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_stub(build: Path, server, ns: str, workdir: Path, ranks: int, settings: Dict[str, object],
             steps: int, options: Dict[str, str] = (), ranks_without_walls=(),
             timeout: float = 120) -> StubRun:
    """Runs the stand-in NekRS on `ranks` MPI ranks with a .par whose [NEKRS_ML] section holds
    `settings` (and NekRS `options`; `ranks_without_walls`: ranks whose boxes have no wall
    faces); returns what it printed and each rank's result file, without judging them."""
    workdir.mkdir(parents=True, exist_ok=True)
    par = write_par(workdir / "stub_channel.par", {"sampleHeight": HEIGHT, "wallBoundaryIds": 1,
                                                   **settings})
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    command = ["mpiexec", "--oversubscribe", "-n", str(ranks), str(build / "nekrs_stub_run"),
               "--setup", par.name, "--out", str(out), "--steps", str(steps), "--dt", str(DT),
               "--viscosity", str(MU), "--density", "1",
               "--field", ",".join(str(FIELD[k]) for k in "acebg")]
    for key, value in dict(options).items():
        command += ["--option", f"{key}={value}"]
    for rank in ranks_without_walls:
        command += ["--no-walls-on-rank", str(rank)]
    env = {**os.environ, **server.info["env"], "NEKRS_ML_NAMESPACE": ns}
    returncode, output = run_process_group(command, env, workdir, timeout)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    results.sort(key=lambda r: r["rank"])
    return StubRun(returncode, output, results)


def run_process_group(command: List[str], env: dict, cwd: Path, timeout: float):
    """(return code, stdout + stderr) of `command`; on timeout mpiexec and every rank it
    started (its own process group) are stopped and the test fails with their output."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                output, _ = proc.communicate(timeout=10)
                break
            except subprocess.TimeoutExpired:
                output = ""
        pytest.fail(f"{command[0]} ran longer than {timeout} s:\n{output[-6000:]}")


def new_namespace() -> str:
    return f"stub{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(tcp_server):
    native = Client(**tcp_server.client_args())
    try:
        yield native
    finally:
        native.close()


def clear_run_keys(client: Client, ns: str) -> None:
    """Removes what an earlier solver run left in a namespace (snapshots, step, done, stop),
    keeping the models and the worker's keys: runs that share the module's worker start clean."""
    kept = (f"{ns}:{{m:", f"{ns}:{{w", keys.model_names(ns))
    for key in client.redis.scan_iter(match=f"{ns}:*"):
        name = key.decode()
        if not name.startswith(kept):
            client.delete(name)


def read_snapshots(client: Client, ns: str):
    return SnapshotReader(client, ns, 0, 1).read_available()


# --- the wall-model BC, compiled as C++ -----------------------------------------------------------
@pytest.mark.parametrize("version,usrwrk_field", [(25, 0), (25, 2), (24, 0)])
def test_okl_traction_equals_wall_model_traction(stub_build, version, usrwrk_field):
    proc = subprocess.run([str(stub_build / f"okl_bc_check_v{version}_f{usrwrk_field}")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"checked (\d+) cases \(NekRS (\d+) API, usrwrk field (\d+)\): 0 mismatches",
                      proc.stdout)
    assert match, proc.stdout
    assert int(match.group(1)) > 5000
    assert (int(match.group(2)), int(match.group(3))) == (version, usrwrk_field)


# --- training -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ranks,dtype,nodes_kind", [(1, "float32", "interior"),
                                                    (2, "float32", "all"),
                                                    (2, "float64", "interior")])
def test_training_streams_exact_wall_samples(stub_build, tcp_server, client, tmp_path, ranks,
                                             dtype, nodes_kind):
    ns, steps, interval = new_namespace(), 6, 2
    run = run_stub(stub_build, tcp_server, ns, tmp_path, ranks,
                   {"workflow": "train", "sampleInterval": interval, "maxSnapshots": 50,
                    "snapshotDtype": dtype, "trainingNodes": nodes_kind}, steps)
    run.assert_ok()
    assert [r["last_step"] for r in run.ranks] == [steps] * ranks
    # UDF_LoadKernels handed the OKL snippet its version, usrwrk field and include path
    for result in run.ranks:
        assert result["kernel_defines"] == {"NEKRS_ML_NEKRS_VERSION": "25",
                                            "NEKRS_ML_USRWRK_FIELD": "0"}
        assert any((Path(p) / "nekrs_ml" / "nekrs" / "wall_model.okl").is_file()
                   for p in result["okl_include_paths"])
        # the BC fields exist in every workflow and hold zeros when nothing is predicted: the
        # BC applies no traction
        assert result["usrwrk_size"] >= 2 * result["field_offset"]
        assert result["field_offset"] > result["nlocal"]
        assert np.all(np.array(result["usrwrk0"]) == 0) and np.all(np.array(result["usrwrk1"]) == 0)
        assert len(result["wall_bc"]["tx"]) == WALL_POINTS_PER_RANK
        for c in ("tx", "ty", "tz"):
            assert np.all(np.array(result["wall_bc"][c]) == 0)

    snapshots = read_snapshots(client, ns)
    assert sorted((s.rank, s.step) for s in snapshots) == [
        (rank, step) for rank in range(ranks) for step in range(interval, steps + 1, interval)]
    for snapshot in snapshots:
        assert snapshot.time == pytest.approx(snapshot.step * DT)
        check_snapshot(snapshot.inputs, snapshot.targets, snapshot.rank, snapshot.time,
                       np.dtype(dtype), nodes_kind)
    assert client.exists(keys.solver_done(ns))
    # the summary's wall statistics: quadrature-weighted, in the global frame, time-averaged
    # over the snapshot steps; the analytic stress is uniform on each wall
    stress = json.loads(client.get_string(keys.solver_summary(ns)))["wall_stress"]
    assert stress["area"] == pytest.approx(2 * X_LENGTH * Z_LENGTH * ranks, rel=1e-12)
    assert stress["training_nodes"] == nodes_kind
    assert stress["points_trained"] == ranks * (
        WALL_POINTS_PER_RANK if nodes_kind == "all" else INTERIOR_POINTS_PER_RANK)
    times = [step * DT for step in range(interval, steps + 1, interval)]
    expected = np.mean([sum(tau[0] * FRAMES[w][0] + tau[1] * FRAMES[w][1]
                            for w in FRAMES for tau in [expected_targets(w, t)]) / 2
                        for t in times], axis=0)
    for group in ("resolved", "resolved_off_edges", "resolved_on_edges"):
        assert stress[group]["steps"] == len(times)
        np.testing.assert_allclose(stress[group]["mean"], expected, rtol=1e-9, atol=1e-15)
    assert stress["applied"] is None  # nothing applied in a training run
    # the momentum balance at the control steps: the case's body force 0.25 and the analytic
    # bulk velocity U_b = (1 + t) (2/3 a + e <z>), <z> = 1; V / A = 1 for this box
    summary = json.loads(client.get_string(keys.solver_summary(ns)))
    assert summary["kinematic_viscosity"] == pytest.approx(MU)  # rho = 1
    flow = report.flow_statistics(summary)  # what report.json's `flow` holds
    assert flow["tau_w_from"] == "resolved" and flow["half_height"] == pytest.approx(1.0)
    assert flow["u_tau"] == pytest.approx(abs(stress["resolved"]["mean"][0]) ** 0.5)
    assert flow["Re_tau"] == pytest.approx(flow["u_tau"] / MU)
    balance = stress["momentum_balance"]
    bulk_rate = 2 / 3 * FIELD["a"] + FIELD["e"] * 1.0
    assert balance["steps"] == len(times) and balance["time"] == pytest.approx([times[0], times[-1]])
    assert balance["driving_gradient"] == pytest.approx(0.25)
    assert balance["volume"] == pytest.approx(2 * X_LENGTH * Z_LENGTH * ranks)
    assert balance["bulk_velocity"] == pytest.approx([(1 + t) * bulk_rate for t in (times[0], times[-1])])
    assert balance["dUb_dt"] == pytest.approx(bulk_rate)
    assert balance["tau_w_implied"] == pytest.approx(0.25 - bulk_rate)
    assert balance["tau_w_measured"] == pytest.approx(stress["resolved"]["mean"][0])
    assert int(client.get_string(keys.solver_step(ns))) == steps
    members = client.command(["SMEMBERS", keys.solver_members(ns)], key=keys.solver_members(ns))
    assert sorted(int(m) for m in members) == list(range(ranks))


def test_flow_statistics_average_the_velocity_over_the_planes_of_the_mesh(stub_build, tcp_server,
                                                                          client, tmp_path):
    """statsInterval: the adapter's volume nodes (coordinates, mass matrix) and velocity; the
    records hold the moments per plane y = const, summed over the ranks."""
    ns, ranks, steps = new_namespace(), 2, 6
    run = run_stub(stub_build, tcp_server, ns, tmp_path, ranks,
                   {"workflow": "train", "sampleInterval": 3, "statsInterval": 2}, steps)
    run.assert_ok()
    records = [json.loads(item) for item in client.list_range(keys.flow_stats(ns))]
    assert [r["step"] for r in records] == [2, 4, 6]
    for record in records:
        t = record["time"]
        assert t == pytest.approx(record["step"] * DT)
        y = np.array(record["y"])
        assert y == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])  # 2 elements of N = 2 in y
        moments = np.array(record["moments"])
        # the mass matrix sums to the volume of every rank's box
        assert moments[:, 0].sum() == pytest.approx(X_LENGTH * 2.0 * Z_LENGTH * ranks, rel=1e-12)
        # w = (1 + t)(b (1 - y^2) + g y) is uniform on a plane: its mean and square are exact
        w = (1 + t) * (FIELD["b"] * (1 - y ** 2) + FIELD["g"] * y)
        assert moments[:, 3] / moments[:, 0] == pytest.approx(w, rel=1e-12, abs=1e-12)
        assert moments[:, 6] / moments[:, 0] == pytest.approx(w ** 2, rel=1e-12, abs=1e-12)
        # the resolved wall stress along x, averaged over both walls
        tau_x = sum((expected_targets(wall, t)[0] * FRAMES[wall][0]
                     + expected_targets(wall, t)[1] * FRAMES[wall][1])[0] for wall in FRAMES) / 2
        assert record["tau_w_resolved"] == pytest.approx(tau_x, rel=1e-9)
        assert record["tau_w_applied"] is None  # no inference
    summary = json.loads(client.get_string(keys.solver_summary(ns)))
    assert summary["statistics"]["records"] == 3 and summary["statistics"]["planes"] == 5


def test_sample_points_outside_the_mesh_are_refused(stub_build, tcp_server, tmp_path):
    """sampleHeight beyond the channel: the point search reports the points as not found and
    the run stops with an error that says so, before streaming anything."""
    ns = new_namespace()
    run = run_stub(stub_build, tcp_server, ns, tmp_path, 2,
                   {"workflow": "train", "sampleInterval": 1, "sampleHeight": 2.5}, 2)
    assert run.returncode != 0 and not run.ranks
    assert "sample points (sampleHeight = 2.5" in run.output and "outside the mesh" in run.output


def test_trainer_stop_request_makes_the_next_step_the_last(stub_build, tcp_server, client,
                                                           tmp_path):
    ns, interval = new_namespace(), 2
    client.set_string(keys.trainer_stop(ns), "1")
    # an elapsed-time limit in force as well: the stop must override it (NekRS checks it first)
    run = run_stub(stub_build, tcp_server, ns, tmp_path, 2,
                   {"workflow": "train", "sampleInterval": interval, "maxSnapshots": 50}, 500,
                   options={"STOP AT ELAPSED TIME": "100"})
    run.assert_ok()
    # read at step `interval`: step interval + 1 is the last (NUMBER TIMESTEPS read back by NekRS)
    assert [r["last_step"] for r in run.ranks] == [interval + 1] * 2
    for result in run.ranks:
        assert (result["number_timesteps"], result["end_time"]) == (str(interval + 1), "-1")
    snapshots = read_snapshots(client, ns)
    assert sorted((s.rank, s.step) for s in snapshots) == [(0, interval), (1, interval)]
    assert client.exists(keys.solver_done(ns))
    assert int(client.get_string(keys.solver_step(ns))) == interval + 1


# --- inference ------------------------------------------------------------------------------------
class KnownModel(torch.nn.Module):
    """Predictions [2 u_t1, u_t2 + u_n]: the stress vector at each wall node is known from the
    field, with a spanwise part, and points elsewhere than the wall slip velocity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([2.0 * x[:, 0], x[:, 1] + x[:, 2]], 1)


def known_model_stress(inputs: np.ndarray) -> np.ndarray:
    return np.stack([2.0 * inputs[:, 0], inputs[:, 1] + inputs[:, 2]], axis=1)


@pytest.fixture(scope="module")
def served(stub_build, tcp_server, tmp_path_factory):
    """(namespace, worker) with KnownModel deployed as `stub_model`."""
    ns = new_namespace()
    path = tmp_path_factory.mktemp("stub-model") / "known.pt"
    torch.jit.save(torch.jit.script(KnownModel().eval()), str(path))
    publisher = Client(**tcp_server.client_args())
    try:
        assert deploy(publisher, ns, "stub_model", path, n_in=3) == 1
    finally:
        publisher.close()
    worker = Worker(tcp_server, ns)
    try:
        yield ns, worker
    finally:
        worker.stop()


def expected_bc(run: StubRun, stress, wall_ranks=None) -> None:
    """usrwrk fields 0 and 1 at every wall node = stress(inputs of that node at the last step)
    = [tau.t1, tau.t2], zero elsewhere; and the traction the BC function applies at every wall
    face node is minus that vector, so that on each wall the area-weighted streamwise (and
    spanwise) traction equals minus the area-weighted predicted stress."""
    t = run.ranks[0]["time"]
    for wall, x, z, usrwrk in run.wall_nodes(wall_ranks):
        assert len(usrwrk) > 0
        np.testing.assert_allclose(usrwrk, stress(expected_inputs(wall, x, z, t)), rtol=1e-5,
                                   atol=1e-12, err_msg=f"[tau.t1, tau.t2] on the {wall} wall")
    assert np.all(run.off_wall_usrwrk(wall_ranks) == 0)

    for wall, x, z, traction, weight in run.wall_bc(wall_ranks):
        assert len(weight) > 0 and np.all(weight > 0)
        t1, t2, _ = FRAMES[wall]
        predicted = stress(expected_inputs(wall, x, z, t))
        predicted_xyz = predicted[:, :1] * t1 + predicted[:, 1:] * t2
        np.testing.assert_allclose(traction, -predicted_xyz, rtol=1e-5, atol=1e-12,
                                   err_msg=f"traction on the {wall} wall")
        applied = -(weight[:, None] * traction).sum(axis=0) / weight.sum()
        expected = (weight[:, None] * predicted_xyz).sum(axis=0) / weight.sum()
        np.testing.assert_allclose(applied[[0, 2]], expected[[0, 2]], rtol=1e-5,
                                   err_msg=f"area-weighted streamwise, spanwise stress, {wall}")
        # both parts are there
        assert abs(expected[0]) > 0 and abs(expected[2]) > 0.01 * abs(expected[0])


def test_inference_puts_the_predicted_vector_into_usrwrk(stub_build, tcp_server, served, client,
                                                         tmp_path):
    ns, _ = served
    clear_run_keys(client, ns)
    run = run_stub(stub_build, tcp_server, ns, tmp_path, 2,
                   {"workflow": "infer", "modelName": "stub_model", "inferenceInterval": 1}, 3)
    run.assert_ok()
    expected_bc(run, known_model_stress)
    # the summary's applied stress: area-weighted (the stress is linear in x and z, so its wall
    # mean is its value at the walls' centre, x = 2, z = 1), in the global frame, averaged over
    # the 4 inference steps
    summary = json.loads(client.get_string(keys.solver_summary(ns)))
    assert summary["inference"]["fallbacks"] == 0
    applied = summary["wall_stress"]["applied"]
    expected = np.mean([known_model_stress(expected_inputs(w, np.array([2.0]), np.array([1.0]), t))[0]
                        @ np.stack(FRAMES[w][:2]) for w in FRAMES for t in (0.0, 0.1, 0.2, 0.3)],
                       axis=0)
    assert applied["steps"] == 4
    np.testing.assert_allclose(applied["mean"], expected, rtol=1e-5)
    assert summary["wall_stress"]["resolved"] is None  # no targets in an inference run
    assert summary["wall_stress"]["points_trained"] is None


def reichardt_stress(inputs: np.ndarray) -> np.ndarray:
    """Reichardt's |tau| at the tangential sample velocity, along that velocity."""
    tangential = inputs[:, :2].astype(np.float64)
    speed = np.hypot(tangential[:, 0], tangential[:, 1])
    magnitude = _core.reichardt_wall_shear_stress(speed, HEIGHT, MU)
    return magnitude[:, None] * tangential / speed[:, None]


def test_no_published_model_yet_applies_reichardts_law(stub_build, tcp_server, served, client,
                                                       tmp_path):
    """train+infer before the trainer has published: the BC uses Reichardt's law at the sample
    point's tangential velocity, and the run streams samples meanwhile."""
    ns, _ = served
    clear_run_keys(client, ns)
    run = run_stub(stub_build, tcp_server, ns, tmp_path, 2,
                   {"workflow": "train+infer", "modelName": "not_yet_trained", "sampleInterval": 2,
                    "maxSnapshots": 50}, 2)
    run.assert_ok()
    expected_bc(run, reichardt_stress)
    assert sorted((s.rank, s.step) for s in read_snapshots(client, ns)) == [(0, 2), (1, 2)]


def test_rank_without_wall_faces_takes_part_in_every_collective(stub_build, tcp_server, served,
                                                               client, tmp_path):
    """A partition can leave a rank without wall faces: it must still join the collective
    point search, evaluation, stop check and last-step barrier, and stream nothing but empty
    snapshots, while the other rank trains and infers as usual."""
    ns, _ = served
    clear_run_keys(client, ns)
    run = run_stub(stub_build, tcp_server, ns, tmp_path, 2,
                   {"workflow": "train+infer", "modelName": "stub_model", "sampleInterval": 2,
                    "maxSnapshots": 50}, 2, ranks_without_walls=[1])
    run.assert_ok()
    assert [r["last_step"] for r in run.ranks] == [2, 2]
    expected_bc(run, known_model_stress, wall_ranks=[0])
    snapshots = read_snapshots(client, ns)
    walled = [s for s in snapshots if s.rank == 0]
    assert [s.step for s in walled] == [2]
    check_snapshot(walled[0].inputs, walled[0].targets, 0, walled[0].time)
    for snapshot in (s for s in snapshots if s.rank == 1):
        assert snapshot.inputs.shape == (0, 3) and snapshot.targets.shape == (0, 2)
    assert client.exists(keys.solver_done(ns))
    # the wall statistics count the walled rank only, and the rank without walls agrees
    stress = json.loads(client.get_string(keys.solver_summary(ns)))["wall_stress"]
    assert stress["area"] == pytest.approx(2 * X_LENGTH * Z_LENGTH)
    assert stress["points_trained"] == INTERIOR_POINTS_PER_RANK
    assert stress["applied"]["steps"] == 3 and stress["resolved"]["steps"] == 1


def leave_dead_worker(client: Client, ns: str, how: str) -> None:
    """A worker that never started leaves no heartbeat; one that crashed (SIGKILL, out of
    memory) leaves its heartbeat until it expires and serves nothing meanwhile."""
    if how == "crashed":
        heartbeat = json.dumps({"pid": 0, "host": "gone", "device": "cpu", "models": {}})
        client.command(["SET", keys.worker_heartbeat(ns, 0), heartbeat, "PX", "1500"],
                       key=keys.worker_heartbeat(ns, 0))


@pytest.mark.parametrize("how", ["missing", "crashed"])
def test_dead_worker_falls_back_to_reichardts_law(stub_build, tcp_server, client, tmp_path, how):
    ns = new_namespace()
    path = tmp_path / "known.pt"
    torch.jit.save(torch.jit.script(KnownModel().eval()), str(path))
    assert deploy(client, ns, "stub_model", path, n_in=3) == 1
    leave_dead_worker(client, ns, how)
    run = run_stub(stub_build, tcp_server, ns, tmp_path / "run", 2,
                   {"workflow": "infer", "modelName": "stub_model", "inferenceTimeout": 5}, 2)
    run.assert_ok()
    expected_bc(run, reichardt_stress)
    # every call (steps 0, 1, 2 on 2 ranks) fell back, counted in the run summary
    summary = json.loads(client.get_string(keys.solver_summary(ns)))
    inference = summary["inference"]
    assert inference["calls"] == 6 and inference["fallbacks"] == 6
    assert inference["failures"]["worker_unavailable"] + inference["failures"]["timeout"] == 6
