"""Channel meshes written as NekRS .re2 files without genbox (nekrs_ml.mesh, `nekrs-ml mesh`):
the binary layout, a round trip through the reader, the faces' boundary conditions against the
geometry, the cases' .box files, the command's errors and, with NEKRS_HOME, NekRS reading it."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nekrs_ml import cli, mesh
from nekrs_ml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CASE_DIR = ROOT / "cases" / "turbChannel_wallModel"

# Nek5000 preprocessor numbering: corners of each face (1-based), and the face's outward axis.
FACE_CORNERS = {1: (1, 2, 6, 5), 2: (2, 3, 7, 6), 3: (3, 4, 8, 7), 4: (4, 1, 5, 8),
                5: (1, 2, 3, 4), 6: (5, 6, 7, 8)}
FACE_NORMAL = {1: (1, -1), 2: (0, +1), 3: (1, +1), 4: (0, -1), 5: (2, -1), 6: (2, +1)}


def face_centres(vertices: np.ndarray, elements: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = np.array([FACE_CORNERS[int(f)] for f in faces]) - 1
    return vertices[elements[:, None] - 1, corners].mean(axis=1)


def write_and_read(tmp_path, grid, name="mesh.re2"):
    path = mesh.write_re2(tmp_path / name, grid)
    return path, mesh.read_re2(path)


# --- layout -------------------------------------------------------------------------------------
def test_header_endianness_marker_and_file_size(tmp_path):
    nx, ny, nz = 5, 3, 4
    path = mesh.write_re2(tmp_path / "c.re2", mesh.channel_mesh((nx, ny, nz)))
    data = path.read_bytes()
    header = data[:80].decode("ascii")
    # NekRS: sscanf("%5s %9d %1d %9d"); Nek5000: read(hdr, '(a5,i9,i3,i9)')
    assert header[:5] == "#v002"
    assert (int(header[5:14]), int(header[14:17]), int(header[17:26])) == (nx * ny * nz, 3,
                                                                         nx * ny * nz)
    assert header.split()[:4] == ["#v002", str(nx * ny * nz), "3", str(nx * ny * nz)]
    assert struct.unpack("<f", data[80:84])[0] == pytest.approx(6.54321, rel=1e-7)
    # header + marker + 25 reals per element + curve count + BC count + 8 reals per boundary face
    boundary_faces = 2 * (ny * nz + nx * ny + nx * nz)
    assert len(data) == 80 + 4 + nx * ny * nz * 25 * 8 + 8 + 8 + boundary_faces * 64
    assert len(data) == mesh.re2_size(nx * ny * nz, 0, [boundary_faces])
    # the first element record: group 0, x of the 8 corners (counter-clockwise, bottom first)
    first = np.frombuffer(data, "<f8", count=25, offset=84)
    assert first[0] == 0
    assert first[1:9].tolist() == [0, 1 / nx, 1 / nx, 0] * 2
    assert first[9:17].tolist() == [0, 0, 1 / ny, 1 / ny] * 2
    assert first[17:25].tolist() == [0] * 4 + [1 / nz] * 4
    # curve count 0, then the BC count, both as 8-byte reals
    after_elements = 84 + nx * ny * nz * 200
    counts = np.frombuffer(data, "<f8", count=2, offset=after_elements)
    assert counts.tolist() == [0, boundary_faces]
    code = data[after_elements + 16 + 56:after_elements + 16 + 64]
    assert code in (b"W       ", b"P       ")


def test_round_trip_keeps_elements_vertices_and_boundary_conditions(tmp_path):
    box = ((0.0, 2 * np.pi), (-1.0, 1.0), (0.0, np.pi))
    grid = mesh.channel_mesh((6, 4, 5), box=box, stretch=1.7)
    _, back = write_and_read(tmp_path, grid)
    assert back.num_elements == 6 * 4 * 5 and back.nelv == 120
    np.testing.assert_array_equal(back.vertices, grid.vertices)
    assert np.all(back.groups == 0) and len(back.curves) == 0
    assert len(back.boundaries) == 1
    ours, theirs = grid.boundaries[0], back.boundaries[0]
    np.testing.assert_array_equal(theirs.element, ours.element)
    np.testing.assert_array_equal(theirs.face, ours.face)
    np.testing.assert_array_equal(theirs.params, ours.params)
    assert theirs.code.tolist() == ours.code.tolist()
    assert back.vertices[..., 0].min() == 0
    assert back.vertices[..., 0].max() == pytest.approx(2 * np.pi, rel=1e-15)
    assert back.vertices[..., 1].min() == -1 and back.vertices[..., 1].max() == 1


def test_reader_detects_big_endian_files(tmp_path):
    grid = mesh.channel_mesh((2, 2, 2))
    data = bytearray(mesh.re2_bytes(grid))
    swapped = data[:80] + struct.pack(">f", 6.54321)
    rest = np.frombuffer(bytes(data[84:]), dtype=np.uint8)
    # byte-swap every 8-byte word except the codes (characters)
    words = np.frombuffer(rest.tobytes(), dtype="<f8").copy()
    raw = words.astype(">f8").tobytes()
    element_bytes = 8 * 25 * grid.num_elements + 16
    codes = range(element_bytes + 56, len(rest), 64)
    raw = bytearray(raw)
    for start in codes:
        raw[start:start + 8] = rest[start:start + 8].tobytes()
    (tmp_path / "big.re2").write_bytes(bytes(swapped) + bytes(raw))
    back = mesh.read_re2(tmp_path / "big.re2")
    np.testing.assert_array_equal(back.vertices, grid.vertices)
    assert back.boundaries[0].code.tolist() == grid.boundaries[0].code.tolist()


# --- geometry of the elements and faces ---------------------------------------------------------
def test_vertices_in_preprocessor_order_and_elements_x_fastest():
    nx, ny, nz = 4, 3, 2
    grid = mesh.channel_mesh((nx, ny, nz), box=((0, 4), (0, 3), (0, 2)))
    v = grid.vertices
    # unit elements: corner c sits at (element index + corner offset)
    for e in range(nx * ny * nz):
        ix, iy, iz = e % nx, (e // nx) % ny, e // (nx * ny)
        expected = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                             [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]]) + [ix, iy, iz]
        np.testing.assert_allclose(v[e], expected, atol=1e-12)


def test_faces_walls_and_periodic_pairs_match_the_geometry():
    nx, ny, nz = 5, 4, 3
    box = ((0.0, 6.0), (-1.0, 1.0), (0.0, 3.0))
    grid = mesh.channel_mesh((nx, ny, nz), box=box, stretch=2.2)
    faces = grid.boundaries[0]
    centres = face_centres(grid.vertices, faces.element, faces.face)
    lengths = np.array([hi - lo for lo, hi in box])
    # each face lies on the side its number says, walls exactly on y = -1 and y = 1
    for centre, face, code in zip(centres, faces.face, faces.code):
        axis, sign = FACE_NORMAL[int(face)]
        assert centre[axis] == pytest.approx(box[axis][0 if sign < 0 else 1])
        assert code == ("W  " if axis == 1 else "P  ")
    walls = faces.code == "W  "
    assert walls.sum() == 2 * nx * nz and np.all(faces.params[walls, 4] == mesh.WALL_ID)
    assert np.all(faces.params[walls, :4] == 0)
    # each periodic face names a partner that names it back, one box length away
    lookup = {(int(e), int(f)): i for i, (e, f) in enumerate(zip(faces.element, faces.face))}
    periodic = np.flatnonzero(~walls)
    assert periodic.size == 2 * (ny * nz + nx * ny)
    for i in periodic:
        partner = lookup[(int(faces.params[i, 0]), int(faces.params[i, 1]))]
        assert faces.code[partner] == "P  "
        assert (faces.params[partner, 0], faces.params[partner, 1]) == (faces.element[i],
                                                                         faces.face[i])
        shift = np.abs(centres[partner] - centres[i])
        axis = FACE_NORMAL[int(faces.face[i])][0]
        assert shift[axis] == pytest.approx(lengths[axis])
        assert np.allclose(np.delete(shift, axis), 0)
    assert np.all(faces.params[~walls, 2:] == 0)


def test_every_face_is_either_shared_or_a_boundary_record():
    """The faces not in the BC section ('E') are exactly those another element shares."""
    grid = mesh.channel_mesh((3, 2, 4), stretch=1.0)
    keys = {}
    for e in range(grid.num_elements):
        for f, corners in FACE_CORNERS.items():
            key = tuple(sorted(map(tuple, np.round(grid.vertices[e, np.array(corners) - 1], 12))))
            keys.setdefault(key, []).append((e + 1, f))
    boundary = {k for k, owners in keys.items() if len(owners) == 1}
    recorded = {(int(e), int(f)) for e, f in zip(grid.boundaries[0].element,
                                                 grid.boundaries[0].face)}
    assert {keys[k][0] for k in boundary} == recorded
    assert all(len(owners) <= 2 for owners in keys.values())


def test_stretching_clusters_element_boundaries_at_both_walls():
    y = mesh.tanh_edges(8, -1.0, 1.0, 2.2)
    np.testing.assert_allclose(y, np.tanh(2.2 * np.linspace(-1, 1, 9)) / np.tanh(2.2))
    heights = np.diff(y)
    np.testing.assert_allclose(heights, heights[::-1])
    assert heights[0] < heights[3] / 3
    np.testing.assert_allclose(mesh.tanh_edges(4, 0.0, 1.0, 0.0), [0, 0.25, 0.5, 0.75, 1])
    grid = mesh.channel_mesh((2, 8, 2), box=((0, 1), (-1, 1), (0, 1)), stretch=2.2)
    np.testing.assert_allclose(np.unique(grid.vertices[..., 1]), y)


# --- the cases' .box files ----------------------------------------------------------------------
@pytest.mark.parametrize("stem, counts", [("channel_train", (36, 16, 18)),
                                          ("channel_infer", (16, 16, 16))])
def test_case_box_files_give_the_meshes_genbox_writes(stem, counts, tmp_path):
    """--from-box reads the case's .box: its element counts (as in the .box, negative = evenly
    divided), the unit cube the UDF maps, walls on y; the same file as --elements."""
    text = (CASE_DIR / f"{stem}.box").read_text()
    in_box = tuple(abs(int(n)) for n in re.search(r"^\s*(-?\d+)\s+(-?\d+)\s+(-?\d+)", text,
                                                  re.M).groups())
    assert in_box == counts
    assert cli.main(["mesh", "channel", "--from-box", str(CASE_DIR / f"{stem}.box"),
                     "-o", str(tmp_path / "box.re2")]) == 0
    assert cli.main(["mesh", "channel", "--elements", *map(str, counts),
                     "-o", str(tmp_path / "cli.re2")]) == 0
    grid = mesh.read_re2(tmp_path / "box.re2")
    nx, ny, nz = counts
    assert grid.num_elements == nx * ny * nz
    assert grid.vertices.min() == 0 and grid.vertices.max() == 1
    for axis, n in enumerate(counts):
        assert np.unique(grid.vertices[..., axis]).size == n + 1
    assert (grid.boundaries[0].code == "W  ").sum() == 2 * nx * nz
    assert (tmp_path / "box.re2").read_bytes() == (tmp_path / "cli.re2").read_bytes()


def test_box_file_gain_and_explicit_coordinates(tmp_path):
    box = tmp_path / "g.box"
    box.write_text("-3\n1\n#====\nBox\n-3  4  -2   nelx nely nelz\n0 1 2.   x0,x1,gain\n"
                   "0 .1 .3\n.6 1.   y coordinates\n0 2 1.\nP  ,P  ,W  ,W  ,P  ,P  \n")
    spec = mesh.read_box(box)
    assert spec.elements == (3, 4, 2)
    # genbox: element sizes 1, 2, 4 scaled to [0, 1]
    np.testing.assert_allclose(spec.x_edges, [0, 1 / 7, 3 / 7, 1])
    np.testing.assert_allclose(spec.y_edges, [0, 0.1, 0.3, 0.6, 1])
    np.testing.assert_allclose(spec.z_edges, [0, 1, 2])
    assert cli.main(["mesh", "channel", "--from-box", str(box)]) == 0
    assert mesh.read_re2(tmp_path / "g.re2").num_elements == 24
    # older genbox inputs name a base .rea file first
    named = tmp_path / "named.box"
    named.write_text("base.rea\n" + box.read_text())
    assert mesh.read_box(named).elements == (3, 4, 2)


@pytest.mark.parametrize("content, words", [
    ("2\n1\nBox\n-3 -4\n0 1 1.\n0 1 1.\nP  ,P  ,W  ,W  \n", "only 3-D"),
    ("-3\n2\nBox\n-3 -4 -3\n0 1 1.\n0 1 1.\n0 1 1.\nP  ,P  ,W  ,W  ,P  ,P  \nP  ,P  ,I  ,I  ,P  ,P  \n",
     "only the fluid"),
    ("-3\n1\nBox\n-3 -4 -3\n0 1 1.\n0 1 1.\n0 1 1.\nP  ,W  ,W  ,W  ,P  ,P  \n", "x- is periodic"),
    ("-3\n1\nBox\n-3 -4 -3\n0 1 1.\n0 1 1.\n0 1 1.\nP  ,P  ,v  ,O  ,P  ,P  \n", "knows 'P'"),
    ("-3\n1\nBox\n-3 -4 -3\n0 1 1.\n0 1 1.\n", "lines"),
    ("-3\n1\nBox\n3 -4 -3\n0 1 .5 2\n0 1 1.\n0 1 1.\nP  ,P  ,W  ,W  ,P  ,P  \n", "increase"),
])
def test_bad_box_files_are_named_with_the_problem(tmp_path, content, words):
    box = tmp_path / "bad.box"
    box.write_text(content)
    with pytest.raises(mesh.MeshFormatError, match=words) as info:
        mesh.read_box(box)
    assert str(box) in str(info.value)


# --- the command's errors -----------------------------------------------------------------------
@pytest.mark.parametrize("args, option", [
    (["--elements", "1", "4", "4"], "--elements"),
    (["--elements", "4", "0", "4"], "--elements"),
    (["--elements", "4", "4", "4", "--stretch", "-1"], "--stretch"),
    (["--elements", "4", "4", "4", "--box", "0", "1", "1", "0", "0", "1"], "--box"),
    (["--elements", "4", "4", "4", "--lengths", "6", "0", "3"], "--lengths"),
    (["--stretch", "2"], "--elements"),
    (["--from-box", "{case}/channel_train.box", "--elements", "4", "4", "4"], "--from-box"),
    (["--from-box", "{tmp}/missing.box"], "missing.box"),
    (["--elements", "4", "4", "4", "-o", "{tmp}/no/such/dir/x.re2"], "-o"),
])
def test_bad_options_are_named(tmp_path, capsys, args, option):
    args = [a.format(case=CASE_DIR, tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.re2")]
    assert cli.main(["mesh", "channel", *args]) == 2
    err = capsys.readouterr().err
    assert "nekrs-ml mesh: error:" in err and option in err
    assert not (tmp_path / "out.re2").exists()


def test_missing_output_and_argument_errors(tmp_path, capsys):
    assert cli.main(["mesh", "channel", "--elements", "4", "4", "4"]) == 2
    assert "-o FILE.re2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["mesh", "channel", "--elements", "4", "4"])
    assert info.value.code == 2 and "--elements" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["mesh", "channel", "--elements", "4", "4", "4", "--box", "0", "1", "0", "1",
                  "0", "1", "--lengths", "1", "2", "3"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_reader_names_bad_files(tmp_path):
    good = mesh.re2_bytes(mesh.channel_mesh((2, 2, 2)))
    cases = {"short.re2": (good[:-10], "ends inside the boundary section 1"),
             "old.re2": (b"#v001" + good[5:], "expected #v002"),
             "endian.re2": (good[:80] + b"\0\0\0\0" + good[84:], "endianness"),
             "elements.re2": (good[:500], "ends inside the elements")}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(mesh.MeshFormatError, match=words) as info:
            mesh.read_re2(tmp_path / name)
        assert name in str(info.value)


def test_command_line_entry_point_writes_the_mesh(tmp_path):
    out = tmp_path / "stretched.re2"
    run = subprocess.run([sys.executable, "-m", "nekrs_ml", "mesh", "channel", "--elements", "4",
                          "6", "3", "--lengths", "6.283185307", "2", "3.141592653",
                          "--stretch", "2.2", "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "72 elements" in run.stdout and "24 wall faces" in run.stdout
    grid = mesh.read_re2(out)
    np.testing.assert_allclose(np.unique(grid.vertices[..., 1]), mesh.tanh_edges(6, -1, 1, 2.2))
    assert grid.vertices[..., 2].max() == pytest.approx(3.141592653)


def test_lib_errors_are_config_errors():
    with pytest.raises(ConfigError, match="increasing"):
        mesh.box_mesh([0, 1, 1], [0, 1], [0, 1, 2],
                      dict(zip(mesh.BOX_SIDES, "PPWWPP")))


# --- NekRS reads it -----------------------------------------------------------------------------
NEKRS_HOME = os.environ.get("NEKRS_HOME")


@pytest.mark.skipif(not NEKRS_HOME or not Path(NEKRS_HOME, "bin", "nekrs").is_file(),
                    reason="needs a NekRS installation: set NEKRS_HOME (bin/nekrs)")
def test_nekrs_runs_the_training_case_on_the_written_mesh(tmp_path):
    """Two steps of the training case (workflow off: no database) on a mesh from the command."""
    if shutil.which("mpiexec") is None:
        pytest.skip("needs mpiexec")
    if not Path(NEKRS_HOME, "include", "app", "nrs", "bdry", "bcData.h").is_file():
        pytest.skip("the case's .par is written for NekRS 25.x")
    case = tmp_path / "case"
    shutil.copytree(CASE_DIR, case, ignore=shutil.ignore_patterns(".cache", "*.re2"))
    par = case / "channel_train.par"
    text = par.read_text()
    text = re.sub(r"(?im)^\s*stopAt\s*=.*$", "stopAt = numSteps", text)
    text = re.sub(r"(?im)^\s*endTime\s*=.*$", "numSteps = 2", text)
    text = re.sub(r"(?im)^\s*checkpointInterval\s*=.*$", "checkpointInterval = 0", text)
    text = re.sub(r"(?im)^\s*workflow\s*=.*$", "workflow = off", text)
    par.write_text(text)
    env = dict(os.environ)
    # Open MPI's default one-sided component fails MPI_Win_create (Nek5000's DPROCMAP) in some
    # containers ("MPI_ERR_WIN: invalid window"); pt2pt works everywhere
    env.setdefault("OMPI_MCA_osc", "pt2pt")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["NEKRS_ML_CMAKE_DIR"] = subprocess.run(
        [sys.executable, "-m", "nekrs_ml", "config", "--cmake-dir"], capture_output=True,
        text=True, check=True).stdout.strip()
    made = subprocess.run([sys.executable, "-m", "nekrs_ml", "mesh", "channel", "--elements",
                           "6", "4", "4", "-o", "channel_train.re2"], cwd=case, env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    run = subprocess.run(["mpiexec", "-n", "1", str(Path(NEKRS_HOME, "bin", "nekrs")),
                          "--setup", "channel_train", "--backend", "serial"], cwd=case, env=env,
                         capture_output=True, text=True, timeout=3600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    # 6 x 4 x 4 elements; walls: one boundary ID, 2 x 6 x 4 faces (periodic faces are none)
    assert "Nelements: 96, NboundaryIDs: 1, NboundaryFaces: 48" in log, log[-3000:]
    assert re.search(r"^step=2\s+t=", log, re.M), log[-3000:]
