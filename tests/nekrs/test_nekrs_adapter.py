"""The NekRS adapter (udf/nekrs/): the case .par files, and the NekRS-independent wall-point
bookkeeping it is built on (nekrs_ml::WallPoints through nekrs_ml._core) on a small mesh of
hexahedral spectral elements built in numpy with NekRS's node, face and index layout. The cases
themselves run only where NEKRS_HOME points to a NekRS installation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nekrs_ml import _core, config
from nekrs_ml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CASE_DIR = ROOT / "cases" / "turbChannel_wallModel"
PAR_FILES = sorted(CASE_DIR.glob("*.par"))
OKL = ROOT / "udf" / "nekrs" / "wall_model.okl"


# --- the cases' .par files ----------------------------------------------------------------------
def test_case_files_exist():
    names = {p.name for p in PAR_FILES}
    for stem in ("channel_train", "channel_infer"):
        assert f"{stem}.par" in names and f"{stem}_v24.par" in names
        assert (CASE_DIR / f"{stem}.udf").is_file()
        assert (CASE_DIR / f"{stem}.box").is_file()
    assert (CASE_DIR / "udf.cmake").is_file() and (CASE_DIR / "README.md").is_file()


@pytest.mark.parametrize("par", PAR_FILES, ids=lambda p: p.name)
def test_case_par_reads_alike_in_python_and_cpp(par):
    python = config.load_par(par).as_dict()
    cpp = _core.load_config(str(par))
    assert python == cpp
    ml = python["nekrs_ml"]
    assert ml["sampleHeight"] == pytest.approx(0.1)
    assert ml["wallBoundaryIds"] == [1]
    assert ml["snapshotDtype"] == "float32"
    if par.stem.startswith("channel_train"):
        assert ml["workflow"] in ("train", "train+infer")
    else:
        assert ml["workflow"] == "infer" and ml["applyPredictions"] is True


def nekrs_sections(text: str) -> dict:
    """The .par as NekRS sees it: lower-cased section -> {lower-cased key: value}, plus the
    top-level keys under ''."""
    sections, current = {"": {}}, ""
    for raw in text.splitlines():
        line = re.split(r"(?:^|\s)[#;]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line.strip("[]").strip().lower()
            sections.setdefault(current, {})
        elif "=" in line:
            key, value = line.split("=", 1)
            sections[current][key.strip().lower()] = value.strip()
    return sections


@pytest.mark.parametrize("par", PAR_FILES, ids=lambda p: p.name)
def test_case_par_is_valid_for_its_nekrs_version(par):
    """NekRS refuses unknown sections unless `userSections` (a top-level key) names them, and
    24.x and 25.x name the velocity section and the wall-model boundary type differently."""
    sections = nekrs_sections(par.read_text())
    user = [s.strip().lower() for s in sections[""].get("usersections", "").split(",")]
    assert "nekrs_ml" in user
    # 25.x has no built-in [CASEDATA] either ("Invalid section name: casedata")
    assert "casedata" not in sections or "casedata" in user
    assert "general" in sections and "nekrs_ml" in sections
    v24 = par.stem.endswith("_v24")
    velocity = sections["velocity" if v24 else "fluid velocity"]
    assert ("pressure" if v24 else "fluid pressure") in sections
    bc = velocity["boundarytypemap"].lower()
    if par.stem.startswith("channel_infer"):
        assert bc == ("zeronvalue/codedfixedgradient" if v24 else "zerodirichletn/udfneumann")
    else:
        assert bc == ("zerovalue" if v24 else "zerodirichlet")
    assert sections["general"]["polynomialorder"] == ("4" if "train" in par.stem else "6")


@pytest.mark.parametrize("stem,elements", [("channel_train", (36, 16, 18)),
                                           ("channel_infer", (16, 16, 16))])
def test_case_box_meshes(stem, elements):
    lines = [l for l in (CASE_DIR / f"{stem}.box").read_text().splitlines() if l.strip()]
    box = next(i for i, l in enumerate(lines) if l.strip().lower().startswith("box"))
    counts = tuple(abs(int(v)) for v in lines[box + 1].split()[:3])
    assert counts == elements
    bcs = [b.strip() for b in lines[box + 5].split("bc's")[0].split(",")]
    assert bcs == ["P", "P", "W", "W", "P", "P"]


def test_okl_snippet_defines_both_apis():
    text = OKL.read_text()
    assert "void udfNeumann(bcData *bc)" in text
    assert "void codedFixedGradientVelocity(bcData *bc)" in text
    assert "NEKRS_ML_NEKRS_VERSION" in text and 'isField("fluid velocity")' in text


# --- a small spectral-element mesh with NekRS's layout ------------------------------------------
def gll_points(n: int) -> np.ndarray:
    """Gauss-Lobatto-Legendre points of degree n on [-1, 1]."""
    interior = np.polynomial.legendre.Legendre.basis(n).deriv().roots()
    return np.concatenate(([-1.0], np.sort(interior.real), [1.0]))


def gll_weights(n: int) -> np.ndarray:
    """Gauss-Lobatto-Legendre quadrature weights of degree n: 2 / (n (n + 1) P_n(r_i)^2)."""
    p = np.polynomial.legendre.Legendre.basis(n)(gll_points(n))
    return 2.0 / (n * (n + 1) * p ** 2)


# NekRS hex faces: (fixed axis, fixed index 0 or Nq-1, outward normal); face node m = a + b*Nq
# with (a, b) the two free indices in (i, j, k) order.
FACES = [(2, 0, (0, 0, -1)), (1, 0, (0, -1, 0)), (0, -1, (1, 0, 0)),
         (1, -1, (0, 1, 0)), (0, 0, (-1, 0, 0)), (2, -1, (0, 0, 1))]


class HexMesh:
    """nx*ny*nz elements of degree N on [0, lx] x [-1, 1] x [0, lz] (y optionally tanh-stretched)
    with NekRS's arrays: volume index e*Np + k*Nq^2 + j*Nq + i, EToB[f + 6e], vmapM, per face
    node outward normal and tangents. Faces on y = -1 and y = 1 have boundary ID 1."""

    def __init__(self, nx=2, ny=2, nz=2, N=3, lx=2.0, lz=1.0, beta=0.0, field_offset=None):
        self.N, self.Nq = N, N + 1
        Nq = self.Nq
        self.Np, self.Nfp = Nq ** 3, Nq ** 2
        r = gll_points(N)
        ex = np.linspace(0, lx, nx + 1)
        ey = np.linspace(-1, 1, ny + 1)
        if beta:
            ey = np.tanh(beta * ey) / np.tanh(beta)
        ez = np.linspace(0, lz, nz + 1)
        elements = [(a, b, c) for c in range(nz) for b in range(ny) for a in range(nx)]
        self.E = len(elements)
        self.Nlocal = self.E * self.Np
        self.field_offset = field_offset or self.Nlocal + 7  # NekRS pads the field offset
        self.x, self.y, self.z = (np.zeros(self.Nlocal) for _ in range(3))
        k, j, i = np.meshgrid(np.arange(Nq), np.arange(Nq), np.arange(Nq), indexing="ij")
        local = (k * Nq * Nq + j * Nq + i).ravel()
        self.ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)[np.argsort(local)]
        self.EToB = np.zeros(6 * self.E, dtype=np.int32)
        self.vmapM = np.zeros(6 * self.E * self.Nfp, dtype=np.int64)
        self.normals = np.zeros((6 * self.E * self.Nfp, 3))
        self.t1 = np.zeros_like(self.normals)
        self.t2 = np.zeros_like(self.normals)
        # surface quadrature weight of each face node (NekRS's WSJ): GLL weights times the
        # face's area per unit reference area
        self.surface_weights = np.zeros(6 * self.E * self.Nfp)
        w = gll_weights(N)
        for e, (a, b, c) in enumerate(elements):
            base = e * self.Np
            half = np.array([ex[a + 1] - ex[a], ey[b + 1] - ey[b], ez[c + 1] - ez[c]]) / 2
            ii, jj, kk = self.ijk.T
            self.x[base:base + self.Np] = ex[a] + (r[ii] + 1) / 2 * (ex[a + 1] - ex[a])
            self.y[base:base + self.Np] = ey[b] + (r[jj] + 1) / 2 * (ey[b + 1] - ey[b])
            self.z[base:base + self.Np] = ez[c] + (r[kk] + 1) / 2 * (ez[c + 1] - ez[c])
            for f, (axis, fixed, normal) in enumerate(FACES):
                if (axis == 1 and fixed == 0 and b == 0) or (axis == 1 and fixed == -1 and b == ny - 1):
                    self.EToB[f + 6 * e] = 1
                free = [ax for ax in range(3) if ax != axis]
                n = np.array(normal, dtype=float)
                t1 = np.zeros(3)
                t1[free[0]] = 1.0
                t2 = np.cross(n, t1)
                for m in range(self.Nfp):
                    idx = [0, 0, 0]
                    idx[axis] = fixed % Nq
                    idx[free[0]], idx[free[1]] = m % Nq, m // Nq
                    row = (e * 6 + f) * self.Nfp + m
                    self.vmapM[row] = base + idx[2] * Nq * Nq + idx[1] * Nq + idx[0]
                    self.normals[row], self.t1[row], self.t2[row] = n, t1, t2
                    self.surface_weights[row] = (w[m % Nq] * w[m // Nq] *
                                                 half[free[0]] * half[free[1]])

    def mark_faces(self, face: int, elements, boundary_id: int) -> None:
        for e in elements:
            self.EToB[face + 6 * e] = boundary_id

    def wall_points(self, wall_ids=(1,), h=0.1):
        return _core.WallPoints(self.EToB, self.vmapM, self.normals, self.t1, self.t2,
                                self.x, self.y, self.z, face_nodes=self.Nfp,
                                wall_ids=list(wall_ids), height=h)

    def strain_rate(self, grad) -> np.ndarray:
        """[6, field_offset] in NekRS order S11, S12, S13, S22, S23, S33 of a velocity with
        gradient grad(x, y, z) -> [npts, 3, 3] (grad[:, a, b] = du_a/dx_b)."""
        g = grad(self.x, self.y, self.z)
        s = 0.5 * (g + np.transpose(g, (0, 2, 1)))
        out = np.full((6, self.field_offset), np.nan)
        for c, (a, b) in enumerate([(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]):
            out[c, :self.Nlocal] = s[:, a, b]
        return out


@pytest.fixture
def mesh():
    return HexMesh(nx=3, ny=2, nz=2, N=3, beta=1.5)


# --- sample points and frames -------------------------------------------------------------------
def test_one_wall_point_per_wall_face_node(mesh):
    points = mesh.wall_points()
    assert points.size == len(points) == 2 * 3 * 2 * mesh.Nfp  # two walls of nx*nz faces
    vol = points.volume_indices
    wall = points.wall_coordinates
    np.testing.assert_array_equal(wall[:, 0], mesh.x[vol])
    np.testing.assert_array_equal(wall[:, 1], mesh.y[vol])
    np.testing.assert_allclose(np.abs(wall[:, 1]), 1.0, atol=1e-14)
    assert len(set(vol.tolist())) == points.size  # one wall face per element: no duplicates
    np.testing.assert_array_equal(points.multiplicity, 1)


def test_surface_weights_integrate_the_wall_and_edges_are_marked(mesh):
    points = _core.WallPoints(mesh.EToB, mesh.vmapM, mesh.normals, mesh.t1, mesh.t2, mesh.x,
                              mesh.y, mesh.z, face_nodes=mesh.Nfp, wall_ids=[1], height=0.1,
                              surface_weights=mesh.surface_weights)
    w = points.weights
    assert w.shape == (points.size,) and np.all(w > 0)
    assert w.sum() == pytest.approx(2 * 2.0 * 1.0, rel=1e-12)  # two walls of lx * lz
    xyz = points.wall_coordinates  # the quadrature is exact for a polynomial of the face degree
    assert (w * xyz[:, 0] ** 3).sum() / w.sum() == pytest.approx(2.0 ** 3 / 4, rel=1e-12)
    # face node m = a + b * Nq: on an edge when a or b is 0 or N
    edge = points.on_face_edge
    m = np.tile(np.arange(mesh.Nfp), points.size // mesh.Nfp)
    a, b = m % mesh.Nq, m // mesh.Nq
    np.testing.assert_array_equal(edge, (a == 0) | (a == mesh.N) | (b == 0) | (b == mesh.N))
    assert (~edge).sum() == 2 * 3 * 2 * (mesh.N - 1) ** 2
    # without weights every wall point counts 1
    np.testing.assert_array_equal(mesh.wall_points().weights, 1.0)
    with pytest.raises(Exception, match="surface_weights"):
        _core.WallPoints(mesh.EToB, mesh.vmapM, mesh.normals, mesh.t1, mesh.t2, mesh.x, mesh.y,
                         mesh.z, face_nodes=mesh.Nfp, wall_ids=[1], height=0.1,
                         surface_weights=mesh.surface_weights[:-1])
    bad = mesh.surface_weights.copy()
    bad[mesh.vmapM.size // 2] = np.nan  # a NaN weight on a wall face node is refused
    wall_rows = np.repeat(np.isin(mesh.EToB, [1]), mesh.Nfp)
    bad[np.flatnonzero(wall_rows)[0]] = -1.0
    with pytest.raises(Exception, match="surface weight"):
        _core.WallPoints(mesh.EToB, mesh.vmapM, mesh.normals, mesh.t1, mesh.t2, mesh.x, mesh.y,
                         mesh.z, face_nodes=mesh.Nfp, wall_ids=[1], height=0.1,
                         surface_weights=bad)


@pytest.mark.parametrize("h", [0.1, 0.25])
def test_sample_points_lie_at_h_along_the_inward_normal(mesh, h):
    points = mesh.wall_points(h=h)
    offset = points.sample_points - points.wall_coordinates
    n = points.normals
    np.testing.assert_allclose(np.linalg.norm(offset, axis=1), h, rtol=1e-13)
    np.testing.assert_allclose(np.einsum("ij,ij->i", offset, n), h, rtol=1e-13)
    wall_y = points.wall_coordinates[:, 1]
    np.testing.assert_allclose(n[:, 1], -np.sign(wall_y))  # into the channel at both walls
    np.testing.assert_allclose(points.sample_points[:, 1], wall_y - np.sign(wall_y) * h,
                               atol=1e-13)
    np.testing.assert_allclose(points.sample_points[:, [0, 2]],
                               points.wall_coordinates[:, [0, 2]])


def test_wall_frame_projection(mesh):
    points = mesh.wall_points()
    rng = np.random.default_rng(1)
    u = rng.normal(size=(points.size, 3))
    inputs = points.to_wall_frame(u)
    assert inputs.dtype == np.float32 and inputs.shape == (points.size, 3)
    expected = np.stack([np.einsum("ij,ij->i", u, points.tangents1),
                         np.einsum("ij,ij->i", u, points.tangents2),
                         np.einsum("ij,ij->i", u, points.normals)], axis=1)
    np.testing.assert_allclose(inputs, expected, rtol=1e-6, atol=1e-6)
    out = np.empty((points.size, 3))
    assert points.to_wall_frame(u, out=out) is not None
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-14)
    # an orthonormal frame keeps the length; u_n > 0 means flow away from the wall
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(u, axis=1))
    away = points.normals * 2.0
    np.testing.assert_allclose(points.to_wall_frame(away, out=out)[:, 2], 2.0)


def test_wall_frame_rejects_bad_shapes(mesh):
    points = mesh.wall_points()
    with pytest.raises(ConfigError, match="shape"):
        points.to_wall_frame(np.zeros((points.size, 2)))
    with pytest.raises(ConfigError, match="out must be"):
        points.to_wall_frame(np.zeros((points.size, 3)), out=np.zeros((points.size, 3), np.int32))


# --- wall shear stress from the velocity gradient -----------------------------------------------
MU = 1 / 19000


def tau_xyz(points, targets):
    return targets[:, :1] * points.tangents1 + targets[:, 1:2] * points.tangents2


def test_linear_shear_flow_gives_mu_a_along_x(mesh):
    """u = (a y, 0, 0): the fluid drags the wall with mu*a along x. The shear the fluid exerts
    is mu du_t/dn (n into the fluid): +mu*a at y = -1 and -mu*a at y = +1, where the velocity
    falls off towards the interior (u relative to the wall velocity a points along -x)."""
    a = 3.0
    points = mesh.wall_points()

    def grad(x, y, z):
        g = np.zeros((x.size, 3, 3))
        g[:, 0, 1] = a
        return g

    targets = points.wall_shear_stress(mesh.strain_rate(grad), MU, out=np.empty((points.size, 2)))
    tau = tau_xyz(points, targets)
    wall_y = points.wall_coordinates[:, 1]
    np.testing.assert_allclose(tau[:, 0], -np.sign(wall_y) * MU * a, rtol=1e-12)
    np.testing.assert_allclose(tau[:, 1:], 0.0, atol=1e-18)
    np.testing.assert_allclose(np.hypot(targets[:, 0], targets[:, 1]), MU * a, rtol=1e-12)
    f32 = points.wall_shear_stress(mesh.strain_rate(grad), MU)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, targets, rtol=1e-6)


def test_channel_flow_stress_points_with_the_near_wall_flow(mesh):
    """u = (c (1 - y^2), 0, 0) (no slip at y = +-1): tau = 2 mu c along +x at both walls, the
    same direction as the inputs' tangential velocity at the sample point."""
    c = 1.5
    points = mesh.wall_points()

    def grad(x, y, z):
        g = np.zeros((x.size, 3, 3))
        g[:, 0, 1] = -2 * c * y
        return g

    targets = points.wall_shear_stress(mesh.strain_rate(grad), MU, out=np.empty((points.size, 2)))
    tau = tau_xyz(points, targets)
    np.testing.assert_allclose(tau[:, 0], 2 * MU * c, rtol=1e-12)
    ys = points.sample_points[:, 1]
    u = np.stack([c * (1 - ys ** 2), 0 * ys, 0 * ys], axis=1)
    inputs = points.to_wall_frame(u, out=np.empty((points.size, 3)))
    assert np.all(np.einsum("ij,ij->i", inputs[:, :2], targets) > 0)  # same direction in (t1, t2)


def test_spanwise_shear_uses_nekrs_component_order(mesh):
    """w = b y: only S23 (index 4 in NekRS's S11, S12, S13, S22, S23, S33) is non-zero."""
    b = 2.0
    points = mesh.wall_points()

    def grad(x, y, z):
        g = np.zeros((x.size, 3, 3))
        g[:, 2, 1] = b
        return g

    tau = tau_xyz(points, points.wall_shear_stress(mesh.strain_rate(grad), MU,
                                                   out=np.empty((points.size, 2))))
    wall_y = points.wall_coordinates[:, 1]
    np.testing.assert_allclose(tau[:, 2], -np.sign(wall_y) * MU * b, rtol=1e-12)
    np.testing.assert_allclose(tau[:, :2], 0.0, atol=1e-18)


def test_normal_stress_is_not_part_of_the_shear(mesh):
    points = mesh.wall_points()

    def grad(x, y, z):  # pure extension along y: S22 only
        g = np.zeros((x.size, 3, 3))
        g[:, 1, 1] = 5.0
        return g

    targets = points.wall_shear_stress(mesh.strain_rate(grad), MU, out=np.empty((points.size, 2)))
    np.testing.assert_allclose(targets, 0.0, atol=1e-18)


# --- BC hand-off: usrwrk and the traction formula -----------------------------------------------
def scatter_stress(points, stress, usrwrk, offset, field):
    """What the adapter's WallStressField does: tau.t1 into field F, tau.t2 into field F + 1."""
    points.scatter(stress, usrwrk, offset, component=0, field=field)
    points.scatter(stress, usrwrk, offset, component=1, field=field + 1)


def test_scatter_writes_each_component_at_the_volume_index(mesh):
    points = mesh.wall_points()
    rng = np.random.default_rng(2)
    predictions = rng.normal(size=(points.size, 2)).astype(np.float32)
    offset = mesh.field_offset
    usrwrk = np.full(4 * offset, -7.0)
    scatter_stress(points, predictions, usrwrk, offset, field=1)
    vol = points.volume_indices
    # both components unchanged, signs included (a spanwise part is not folded into a magnitude)
    np.testing.assert_array_equal(usrwrk[offset + vol], predictions[:, 0])
    np.testing.assert_array_equal(usrwrk[2 * offset + vol], predictions[:, 1])
    untouched = np.ones(4 * offset, bool)
    untouched[offset + vol] = untouched[2 * offset + vol] = False
    assert np.all(usrwrk[untouched] == -7.0)


def test_scatter_averages_nodes_shared_by_two_wall_faces():
    """Elements with a channel wall face (ID 1) and a wall face at x = 0 (ID 2): the nodes of
    their common edge are one volume node but two wall points."""
    mesh = HexMesh(nx=2, ny=2, nz=1, N=2)
    corner = [e for e in range(mesh.E) if mesh.x[e * mesh.Np] == 0.0]
    mesh.mark_faces(4, corner, 2)  # face 4: x-min
    points = mesh.wall_points(wall_ids=(1, 2))
    vol = points.volume_indices
    values, counts = np.unique(vol, return_counts=True)
    shared = values[counts == 2]
    Nq = mesh.Nq
    edge = []  # i = 0 nodes along z on the channel walls: j = 0 at y = -1, j = Nq-1 at y = 1
    for e in corner:
        for k in range(Nq):
            for j in (0, Nq - 1):
                v = e * mesh.Np + k * Nq * Nq + j * Nq
                if abs(mesh.y[v]) == 1.0:
                    edge.append(v)
    assert sorted(shared.tolist()) == sorted(edge)
    assert points.size == len(vol) == len(values) + len(shared)
    np.testing.assert_array_equal(np.sort(points.wall_nodes), values)
    # the x-min wall's sample points go along +x
    xwall = np.abs(points.normals[:, 0]) > 0.5
    np.testing.assert_allclose(points.sample_points[xwall, 0], 0.1)
    predictions = np.zeros((points.size, 2))
    predictions[:, 0] = np.where(xwall, 3.0, 1.0)
    predictions[:, 1] = np.where(xwall, -1.0, 0.5)
    usrwrk = np.zeros(2 * mesh.field_offset)
    scatter_stress(points, predictions, usrwrk, mesh.field_offset, field=0)
    np.testing.assert_allclose(usrwrk[shared], 2.0)  # mean of 1 and 3
    np.testing.assert_allclose(usrwrk[mesh.field_offset + shared], -0.25)  # mean of 0.5 and -1
    only_bottom = np.setdiff1d(vol[~xwall], shared)
    np.testing.assert_allclose(usrwrk[only_bottom], 1.0)
    np.testing.assert_allclose(usrwrk[mesh.field_offset + only_bottom], 0.5)


def test_scatter_checks_sizes(mesh):
    points = mesh.wall_points()
    predictions = np.ones((points.size, 2))
    with pytest.raises(ConfigError, match="needs"):
        points.scatter(predictions, np.zeros(mesh.field_offset), mesh.field_offset, 1, field=1)
    with pytest.raises(ConfigError, match="field offset"):
        points.scatter(predictions, np.zeros(mesh.Nlocal), 10, 0)
    with pytest.raises(ConfigError, match="shape"):
        points.scatter(np.ones((points.size, 3)), np.zeros(mesh.field_offset), mesh.field_offset,
                       0)
    with pytest.raises(ConfigError, match="component must be 0"):
        points.scatter(predictions, np.zeros(mesh.field_offset), mesh.field_offset, 2)


@pytest.mark.parametrize("tau", [(0.0025, 0.0), (0.0025, 8e-4), (-0.001, -0.003), (0.0, 0.0)])
def test_traction_on_the_fluid_is_minus_the_stored_stress(tau):
    """The fluid pulls the wall with tau; the wall holds the fluid back with -tau, spanwise part
    included."""
    assert _core.wall_model_traction(*tau) == (-tau[0], -tau[1])


def wall_face_rows(mesh, wall_id=1):
    """Rows (face nodes) of the wall faces in the order the BC kernel visits them (and in which
    WallPoints numbers its points)."""
    return [(e * 6 + f) * mesh.Nfp + m for e in range(mesh.E) for f in range(6)
            if mesh.EToB[f + 6 * e] == wall_id for m in range(mesh.Nfp)]


def applied_tractions(mesh, usrwrk, field):
    """The traction in space the BC applies at each wall face node: wall_model_traction of
    the two usrwrk fields at idM, along that node's t1, t2."""
    offset = mesh.field_offset
    rows = wall_face_rows(mesh)
    traction = np.zeros((len(rows), 3))
    for k, row in enumerate(rows):
        idM = mesh.vmapM[row]
        tr1, tr2 = _core.wall_model_traction(usrwrk[field * offset + idM],
                                             usrwrk[(field + 1) * offset + idM])
        traction[k] = tr1 * mesh.t1[row] + tr2 * mesh.t2[row]
    return rows, traction


def test_bc_kernel_sees_the_prediction_at_its_volume_index(mesh):
    """The core side of the BC hand-off, face node by face node as the BC kernel visits them:
    (tau.t1, tau.t2) at usrwrk[F * fieldOffset + idM] and usrwrk[(F + 1) * fieldOffset + idM],
    and the traction -(tau.t1 t1 + tau.t2 t2): the prediction of a wall point reaches its own
    face node as a vector. (The OKL function itself is compiled as C++ and compared with
    wall_model_traction in test_nekrs_stub.py, which also runs the adapter's hand-off end to
    end.)"""
    points = mesh.wall_points()
    rng = np.random.default_rng(3)
    predictions = rng.uniform(-0.004, 0.004, size=(points.size, 2))
    offset, field = mesh.field_offset, 2
    usrwrk = np.zeros((field + 2) * offset)
    scatter_stress(points, predictions, usrwrk, offset, field)
    rows, traction = applied_tractions(mesh, usrwrk, field)
    assert len(rows) == points.size
    np.testing.assert_array_equal(points.volume_indices, mesh.vmapM[rows])
    expected = -(predictions[:, :1] * points.tangents1 + predictions[:, 1:] * points.tangents2)
    np.testing.assert_allclose(traction, expected, rtol=1e-12, atol=1e-18)


def test_area_weighted_streamwise_traction_equals_the_predicted_stress(mesh):
    """A predicted stress with a streamwise part that varies along the wall and a spanwise part
    (what a model of a turbulent channel predicts): summed with the surface weights, the
    traction the BC applies on each wall is minus the predicted force, streamwise and
    spanwise. (A magnitude applied along some other direction, e.g. the wall slip velocity,
    would transfer less streamwise force and a different spanwise one.)"""
    points = mesh.wall_points()
    wall = points.wall_coordinates
    # the stress in space: streamwise 2.5e-3 (1 + 0.3 sin x), spanwise 8e-4 (0.5 + cos(2 pi z))
    stress = np.zeros((points.size, 3))
    stress[:, 0] = 2.5e-3 * (1 + 0.3 * np.sin(wall[:, 0]))
    stress[:, 2] = 8e-4 * (0.5 + np.cos(2 * np.pi * wall[:, 2]))
    predictions = np.stack([np.einsum("ij,ij->i", stress, points.tangents1),
                            np.einsum("ij,ij->i", stress, points.tangents2)], axis=1)
    field = 0
    usrwrk = np.zeros(2 * mesh.field_offset)
    scatter_stress(points, predictions, usrwrk, mesh.field_offset, field)
    rows, traction = applied_tractions(mesh, usrwrk, field)
    weights = mesh.surface_weights[rows]
    for side in (-1.0, 1.0):
        on = np.sign(wall[:, 1]) == side
        area = weights[on].sum()
        np.testing.assert_allclose(area, 2.0 * 1.0, rtol=1e-12)  # lx * lz
        applied = -(weights[on, None] * traction[on]).sum(axis=0) / area
        predicted = (weights[on, None] * stress[on]).sum(axis=0) / area
        np.testing.assert_allclose(applied, predicted, rtol=1e-12, atol=1e-18)
        assert applied[0] > 2e-3 and applied[2] > 3e-4  # both parts are there
        np.testing.assert_allclose(applied[1], 0.0, atol=1e-18)  # nothing along the normal


def test_construction_errors(mesh):
    with pytest.raises(ConfigError, match="height"):
        mesh.wall_points(h=0.0)
    with pytest.raises(ConfigError, match="no wall boundary IDs"):
        mesh.wall_points(wall_ids=())
    bad = mesh.vmapM.copy()
    bad[(mesh.EToB == 1).nonzero()[0][0] * mesh.Nfp] = mesh.Nlocal
    with pytest.raises(ConfigError, match="outside"):
        _core.WallPoints(mesh.EToB, bad, mesh.normals, mesh.t1, mesh.t2, mesh.x, mesh.y, mesh.z,
                         face_nodes=mesh.Nfp, wall_ids=[1], height=0.1)
    with pytest.raises(ConfigError, match="normals"):
        _core.WallPoints(mesh.EToB, mesh.vmapM, mesh.normals[:-1], mesh.t1, mesh.t2, mesh.x,
                         mesh.y, mesh.z, face_nodes=mesh.Nfp, wall_ids=[1], height=0.1)
    none = mesh.wall_points(wall_ids=(5,))
    assert none.size == 0 and none.sample_points.shape == (0, 3)


# --- with NekRS ----------------------------------------------------------------------------------
NEKRS_HOME = os.environ.get("NEKRS_HOME")
needs_nekrs = pytest.mark.skipif(
    not NEKRS_HOME or not Path(NEKRS_HOME, "bin", "nekrs").is_file(),
    reason="needs a NekRS installation: set NEKRS_HOME (bin/nekrs) to run the channel case")


def nekrs_major() -> int:
    """24 or 25 from the installed header layout (as cmake/udf.cmake detects it)."""
    return 25 if Path(NEKRS_HOME, "include", "app", "nrs", "bdry", "bcData.h").is_file() else 24


@needs_nekrs
def test_training_case_streams_finite_snapshots(tcp_server, tmp_path):
    """Runs the training case for a few steps on 2 ranks and reads what arrived."""
    from nekrs_ml import keys

    if shutil.which("mpiexec") is None:
        pytest.skip("needs mpiexec")
    case = tmp_path / "case"
    shutil.copytree(CASE_DIR, case)
    suffix = "" if nekrs_major() >= 25 else "_v24"
    par = case / f"channel_train{suffix}.par"
    text = par.read_text()
    text = re.sub(r"(?im)^\s*stopAt\s*=.*$", "stopAt = numSteps", text)
    text = re.sub(r"(?im)^\s*endTime\s*=.*$", "numSteps = 4", text)
    text = re.sub(r"(?im)^\s*numSteps\s*=.*$", "numSteps = 4", text)
    text = re.sub(r"(?im)^\s*stats(Interval|Start|StartTime)\s*=.*$", "", text)
    text = re.sub(r"(?im)^\s*sampleInterval\s*=.*$", "sampleInterval = 2\nstatsInterval = 2", text)
    text = re.sub(r"(?im)^\s*sampleStart(Time)?\s*=.*$", "", text)  # sample from the start
    text = re.sub(r"(?im)^\s*checkpointInterval\s*=.*$", "checkpointInterval = 0", text)
    # the mesh this test makes (or copies) below, whatever the case's [MESH] file names
    text = re.sub(r"(?im)^\s*file\s*=.*$", 'file = "smoke.re2"', text)
    smoke = case / "smoke.par"
    smoke.write_text(text)
    shutil.copy(case / "channel_train.udf", case / "smoke.udf")
    shutil.copy(case / "channel_train.box", case / "smoke.box")
    if (case / "channel_train.re2").exists():
        shutil.copy(case / "channel_train.re2", case / "smoke.re2")
    else:
        subprocess.run([sys.executable, "-m", "nekrs_ml", "mesh", "channel", "--from-box",
                        "smoke.box", "-o", "smoke.re2"], cwd=case, check=True,
                       capture_output=True, timeout=120)
    ns = "nekrstest"
    env = dict(os.environ, NEKRS_ML_ADDRESSES=",".join(tcp_server.addresses),
               NEKRS_ML_MODE="single", NEKRS_ML_NAMESPACE=ns)
    if tcp_server.password:
        pw = tmp_path / "password"
        pw.write_text(tcp_server.password)
        env["NEKRS_ML_PASSWORD_FILE"] = str(pw)
    env["NEKRS_ML_CMAKE_DIR"] = subprocess.run(
        [sys.executable, "-m", "nekrs_ml", "config", "--cmake-dir"], capture_output=True,
        text=True, check=True).stdout.strip()
    run = subprocess.run(["mpiexec", "-n", "2", str(Path(NEKRS_HOME, "bin", "nekrs")),
                          "--setup", "smoke", "--backend", "serial"], cwd=case, env=env,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    client = _core.Client(tcp_server.addresses, password=tcp_server.password)
    assert client.exists(keys.solver_done(ns))
    total = 0
    for rank in range(2):
        for entry in client.list_range(keys.snapshot_index(ns, rank)):
            seq = int(entry.split()[0])
            x = client.get_tensor(keys.snapshot_inputs(ns, rank, seq))
            y = client.get_tensor(keys.snapshot_targets(ns, rank, seq))
            assert x.dtype == np.float32 and x.shape[1] == 3 and y.shape == (x.shape[0], 2)
            assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
            total += x.shape[0]
    # 36 x 18 wall faces per wall, 2 walls, 9 face-interior nodes of 25 per face (N = 4,
    # trainingNodes = interior), 2 sampling steps
    assert total == 2 * 2 * 36 * 18 * 9
    import json

    stress = json.loads(client.get_string(keys.solver_summary(ns)))["wall_stress"]
    assert stress["points_trained"] == 2 * 36 * 18 * 9
    assert stress["area"] == pytest.approx(2 * 2 * np.pi * np.pi, rel=1e-6)  # 2 walls, 2 pi x pi
    for group in ("resolved", "resolved_off_edges", "resolved_on_edges"):
        assert stress[group]["steps"] == 2 and np.all(np.isfinite(stress[group]["mean"]))
    # flow statistics every 2 steps: 16 elements of N = 4 across the channel give 65 planes
    records = [json.loads(item) for item in client.list_range(keys.flow_stats(ns), 0, -1)]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        y, moments = np.array(record["y"]), np.array(record["moments"])
        assert len(y) == 65 and y[0] == pytest.approx(-1) and y[-1] == pytest.approx(1)
        assert np.all(np.isfinite(moments)) and moments.shape == (65, 8)
        assert moments[:, 0].sum() == pytest.approx(2 * 2 * np.pi * np.pi, rel=1e-6)
        assert record["tau_w_resolved"] > 0
    balance = stress["momentum_balance"]  # dp/dx = (950 / 19000)^2 declared by the case's udf
    assert balance["driving_gradient"] == pytest.approx(0.05 ** 2, rel=1e-6)
    assert balance["volume"] == pytest.approx(2 * 2 * np.pi * np.pi, rel=1e-6)


@needs_nekrs
def test_wall_modelled_case_reports_flow_statistics(tmp_path):
    """`nekrs-ml run channel_infer.par` on a small mesh: report.json's flow block (u_tau from the
    applied wall stress, the folded profile in wall units) holds finite values."""
    import json

    import torch

    if shutil.which("mpiexec") is None:
        pytest.skip("needs mpiexec")
    if nekrs_major() < 25:
        pytest.skip("the flow-rate correction that drives this case is reported by NekRS 25")
    case = tmp_path / "case"
    shutil.copytree(CASE_DIR, case)
    subprocess.run([sys.executable, "-m", "nekrs_ml", "mesh", "channel", "--elements", "8", "6",
                    "6", "-o", "channel_infer.re2"], cwd=case, check=True, capture_output=True,
                   timeout=120)
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(case / "any_model.pt"))
    par = case / "channel_infer.par"
    text = par.read_text()
    text = re.sub(r"(?im)^\s*stopAt\s*=.*$", "stopAt = numSteps", text)
    text = re.sub(r"(?im)^\s*endTime\s*=.*$", "numSteps = 20", text)
    text = re.sub(r"(?im)^\s*checkpointInterval\s*=.*$", "checkpointInterval = 0", text)
    text = re.sub(r"(?im)^\s*statsInterval\s*=.*$", "statsInterval = 5", text)
    text = re.sub(r"(?im)^\s*statsStartTime\s*=.*$", "", text)
    # the BC from Reichardt's law; the model is only evaluated beside it
    text = re.sub(r"(?im)^\s*applyPredictions\s*=.*$", "applyPredictions = false", text)
    text = re.sub(r"(?im)^\s*deployModel\s*=.*$", 'deployModel = "any_model.pt"', text)
    par.write_text(text)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    run = subprocess.run([sys.executable, "-m", "nekrs_ml", "run", "channel_infer.par", "--solver",
                          "nekrs", "--run-dir", str(tmp_path / "run")], cwd=case, env=env,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    flow = report["flow"]
    assert flow["records"] == 4 and flow["steps"] == [5, 20] and flow["tau_w_from"] == "applied"
    assert 0.01 < flow["u_tau"] < 0.2 and np.isfinite(flow["Re_tau"]) and flow["U_b"] > 0
    profile = flow["profile"]
    assert len(profile["y"]) == 6 * 6 // 2 + 1  # 37 planes (6 elements of N = 6), folded
    for name in ("y_plus", "U_plus", "uu_plus", "vv_plus", "ww_plus", "uv_plus"):
        assert np.all(np.isfinite(profile[name])), name
    assert "profile.png" in report["plots"]
    assert report["timing"]["coupling_fraction"] > 0
