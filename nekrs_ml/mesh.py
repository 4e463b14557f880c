"""Box meshes for NekRS written directly as Nek5000 binary ``.re2`` files (``#v002``).

The file layout, as NekRS 25 (through its Nek5000 core) reads it, all reals 8 bytes:

- an 80-character ASCII header: ``#v002``, number of elements (9 columns), dimension
  (3 columns), number of velocity elements (9 columns), free text;
- the 4-byte float 6.54321 from which the reader detects the byte order;
- per element: group id, then the x of its 8 vertices, their y, their z, vertices in Nek5000's
  "preprocessor" corner order (counter-clockwise on the bottom face t = -1, then on the top face);
- the curved sides: a count, then records (element, face, 5 parameters, 8-character code);
- one boundary-condition section per field: a count, then records of the faces that are not
  element-to-element ('E  ' faces are left out): element, face (preprocessor face numbering),
  5 parameters, 8-character code. A periodic face ('P  ') carries its partner's element and face
  in parameters 1 and 2; parameter 5, when positive, is the face's boundary ID, which NekRS's
  ``boundaryTypeMap`` refers to.

Elements and faces are numbered from 1 in the file, elements x fastest, then y, then z, as
Nek5000's genbox numbers a box.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, NekrsMLError

VERSION = "#v002"
HEADER_BYTES = 80
ENDIAN_TEST = np.float32(6.54321)
REAL = 8                      # bytes per value in a #v002 file
RECORD_VALUES = 8             # element, face, 5 parameters, code
CODE_BYTES = 8

# Corners of the unit cube [0,1]^3 in Nek5000's preprocessor order (the order of the file).
CORNERS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                    [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]])
# Preprocessor face numbers of the box sides: y-min 1, x-max 2, y-max 3, x-min 4, z-min 5, z-max 6.
SIDE_FACE = {"x-": 4, "x+": 2, "y-": 1, "y+": 3, "z-": 5, "z+": 6}
# Sides in the order of a genbox boundary-condition line.
BOX_SIDES = ("x-", "x+", "y-", "y+", "z-", "z+")
OPPOSITE = {"x-": "x+", "x+": "x-", "y-": "y+", "y+": "y-", "z-": "z+", "z+": "z-"}

WALL_ID = 1                   # boundary ID of the walls in cases/turbChannel_wallModel
UNIT_BOX = ((0.0, 1.0), (0.0, 1.0), (0.0, 1.0))


class MeshFormatError(NekrsMLError):
    """A file is not a valid .re2 (or .box) file; the message names the file and what is wrong."""


@dataclass
class BoundaryFaces:
    """The boundary-condition records of one field (1-based element and face numbers)."""
    element: np.ndarray       # (n,) int
    face: np.ndarray          # (n,) int, preprocessor face numbering
    params: np.ndarray        # (n, 5) float
    code: np.ndarray          # (n,) str, 3 characters ('W  ', 'P  ', ...)

    def __len__(self) -> int:
        return int(self.element.size)


@dataclass
class Re2Mesh:
    vertices: np.ndarray      # (nel, 8, 3): vertex coordinates, preprocessor corner order
    boundaries: List[BoundaryFaces]
    groups: Optional[np.ndarray] = None       # (nel,) int; zeros when None
    curves: Optional[BoundaryFaces] = None    # curved-side records; none when None
    nelv: Optional[int] = None                # velocity elements; all when None
    header_text: str = "nekrs_ml mesh"

    @property
    def num_elements(self) -> int:
        return int(self.vertices.shape[0])


# --- coordinates of the element boundaries -------------------------------------------------
def uniform_edges(n: int, lo: float, hi: float) -> np.ndarray:
    return geometric_edges(n, lo, hi, 1.0)


def tanh_edges(n: int, lo: float, hi: float, beta: float) -> np.ndarray:
    """n elements between two walls, clustered towards both by y = tanh(beta eta) / tanh(beta)
    on eta in [-1, 1] (the map of the cases' UDF_Setup); beta = 0 is uniform."""
    if beta == 0:
        return uniform_edges(n, lo, hi)
    eta = np.linspace(-1.0, 1.0, n + 1)
    unit = np.tanh(beta * eta) / math.tanh(beta)
    edges = lo + (hi - lo) * 0.5 * (unit + 1.0)
    edges[0], edges[-1] = lo, hi
    return edges


def geometric_edges(n: int, lo: float, hi: float, ratio: float) -> np.ndarray:
    """genbox's "x0 x1 gain" line: element sizes in geometric progression (each `ratio` times
    the previous one), scaled to [lo, hi]; ratio <= 0 means 1. The arithmetic follows genbox's
    step by step, so that the coordinates are the same to the last bit."""
    if ratio <= 0:
        ratio = 1.0
    step = (hi - lo) / n
    offsets = [0.0]
    for _ in range(n):
        offsets.append(offsets[-1] + step)
        step *= ratio
    scale = (hi - lo) / offsets[-1]
    return np.array([lo + scale * offset for offset in offsets])


# --- the box mesh ---------------------------------------------------------------------------
def element_index(ix, iy, iz, counts) -> np.ndarray:
    """0-based element number of element (ix, iy, iz): x fastest, then y, then z."""
    nx, ny, _ = counts
    return ix + nx * (iy + ny * iz)


def box_mesh(x_edges: Sequence[float], y_edges: Sequence[float], z_edges: Sequence[float],
             sides: dict, wall_id: int = WALL_ID) -> Re2Mesh:
    """Tensor-product box of hexahedra between the given element boundaries.

    `sides` maps each of "x-", "x+", "y-", "y+", "z-", "z+" to 'P' (periodic with the opposite
    side) or 'W' (wall, boundary ID `wall_id`)."""
    edges = [np.asarray(e, dtype=float) for e in (x_edges, y_edges, z_edges)]
    for axis, e in zip("xyz", edges):
        if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
            raise ConfigError(f"{axis} element boundaries must be increasing, at least 2 values; "
                              f"got {e.tolist()}")
    codes = check_sides(sides)
    counts = tuple(e.size - 1 for e in edges)
    vertices = box_vertices(edges, counts)
    boundaries = box_boundaries(counts, codes, wall_id)
    return Re2Mesh(vertices=vertices, boundaries=[boundaries])


def check_sides(sides: dict) -> dict:
    codes = {}
    for side in BOX_SIDES:
        if side not in sides:
            raise ConfigError(f"boundary condition of side {side} missing (sides: "
                              f"{', '.join(BOX_SIDES)})")
        code = str(sides[side]).strip().upper()
        if code not in ("P", "W"):
            raise ConfigError(f"boundary condition {sides[side]!r} of side {side}: this mesh "
                              "writer knows 'P' (periodic) and 'W' (wall)")
        codes[side] = code
    for side in BOX_SIDES:
        if (codes[side] == "P") != (codes[OPPOSITE[side]] == "P"):
            raise ConfigError(f"side {side} is periodic but {OPPOSITE[side]} is not: periodic "
                              "sides come in opposite pairs")
    return codes


def box_vertices(edges, counts) -> np.ndarray:
    nx, ny, nz = counts
    iz, iy, ix = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ix, iy, iz = ix.ravel(), iy.ravel(), iz.ravel()         # element order: x fastest
    vertices = np.empty((ix.size, 8, 3))
    for corner, (cx, cy, cz) in enumerate(CORNERS):
        vertices[:, corner, 0] = edges[0][ix + cx]
        vertices[:, corner, 1] = edges[1][iy + cy]
        vertices[:, corner, 2] = edges[2][iz + cz]
    return vertices


def box_boundaries(counts, codes: dict, wall_id: int) -> BoundaryFaces:
    """Records of the faces on the box sides, element by element, faces in preprocessor order."""
    nx, ny, nz = counts
    axis_of = {"x": 0, "y": 1, "z": 2}
    records = []   # (element, face, params, code)
    iz, iy, ix = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([ix.ravel(), iy.ravel(), iz.ravel()], axis=1)
    for side in BOX_SIDES:
        axis = axis_of[side[0]]
        at_side = 0 if side.endswith("-") else counts[axis] - 1
        on_side = index[index[:, axis] == at_side]
        params = np.zeros((on_side.shape[0], 5))
        if codes[side] == "P":
            partner = on_side.copy()
            partner[:, axis] = counts[axis] - 1 - at_side
            params[:, 0] = element_index(*partner.T, counts) + 1
            params[:, 1] = SIDE_FACE[OPPOSITE[side]]
        else:
            params[:, 4] = wall_id
        element = element_index(*on_side.T, counts) + 1
        for e, p in zip(element, params):
            records.append((int(e), SIDE_FACE[side], p, f"{codes[side]:<3}"))
    records.sort(key=lambda r: (r[0], r[1]))
    return BoundaryFaces(
        element=np.array([r[0] for r in records], dtype=np.int64),
        face=np.array([r[1] for r in records], dtype=np.int64),
        params=np.array([r[2] for r in records]).reshape(-1, 5),
        code=np.array([r[3] for r in records], dtype="<U3"))


def channel_mesh(elements: Sequence[int], box=UNIT_BOX, stretch: float = 0.0,
                 wall_id: int = WALL_ID) -> Re2Mesh:
    """Channel box: walls (boundary ID `wall_id`) on the y sides, periodic in x and z; element
    boundaries uniform in x and z, uniform or tanh-clustered towards the walls in y.

    The default box is the unit cube that cases/turbChannel_wallModel map to the channel in
    UDF_Setup (the mesh genbox writes from their .box files)."""
    counts = check_elements(elements)
    (x0, x1), (y0, y1), (z0, z1) = check_box(box)
    if not (stretch >= 0 and math.isfinite(stretch)):
        raise ConfigError(f"--stretch must be >= 0 (0: uniform), got {stretch}")
    return box_mesh(uniform_edges(counts[0], x0, x1), tanh_edges(counts[1], y0, y1, stretch),
                    uniform_edges(counts[2], z0, z1),
                    {"x-": "P", "x+": "P", "y-": "W", "y+": "W", "z-": "P", "z+": "P"},
                    wall_id=wall_id)


def check_elements(elements: Sequence[int]) -> Tuple[int, int, int]:
    values = list(elements)
    if len(values) != 3 or any(int(v) != v for v in values):
        raise ConfigError(f"--elements takes 3 integers NX NY NZ, got {values}")
    nx, ny, nz = (int(v) for v in values)
    if ny < 1:
        raise ConfigError(f"--elements: NY must be >= 1, got {ny}")
    # one element across a periodic direction would be its own neighbour
    if nx < 2 or nz < 2:
        raise ConfigError(f"--elements: NX and NZ (periodic directions) must be >= 2, got "
                          f"{nx} and {nz}")
    return nx, ny, nz


def check_box(box) -> tuple:
    pairs = [tuple(float(v) for v in pair) for pair in box]
    if len(pairs) != 3 or any(len(p) != 2 for p in pairs):
        raise ConfigError(f"--box takes 6 numbers X0 X1 Y0 Y1 Z0 Z1, got {box}")
    for axis, (lo, hi) in zip("XYZ", pairs):
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ConfigError(f"--box: {axis}1 must be greater than {axis}0, got {lo} {hi}")
    return tuple(pairs)


# --- genbox's .box files -----------------------------------------------------------------------
@dataclass
class BoxSpec:
    """One 3-D box of a genbox input file."""
    x_edges: np.ndarray
    y_edges: np.ndarray
    z_edges: np.ndarray
    sides: dict = field(default_factory=dict)

    @property
    def elements(self) -> Tuple[int, int, int]:
        return (self.x_edges.size - 1, self.y_edges.size - 1, self.z_edges.size - 1)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eEdD][+-]?\d+)?$")


def _leading_numbers(line: str) -> List[float]:
    """The numbers a free-format Fortran read takes from a line: those before the comment."""
    values = []
    for token in line.replace(",", " ").split():
        if not _NUMBER.match(token):
            break
        values.append(float(token.replace("d", "e").replace("D", "e")))
    return values


def read_box(path) -> BoxSpec:
    """Reads a genbox input file with one 3-D box and one field (the channel cases' .box)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--from-box: cannot read {path}: {exc.strerror}") from None
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if lines and not _leading_numbers(lines[0]):
        lines = lines[1:]     # older genbox inputs start with the name of a base .rea file

    def fail(message: str):
        raise MeshFormatError(f"{path}: {message} (genbox input: ndim, number of fields, a "
                              "box name, nelx nely nelz, x/y/z lines, a line of 6 boundary "
                              "conditions)")

    ndim = _leading_numbers(lines[0]) if lines else []
    if not ndim or abs(ndim[0]) != 3:
        fail(f"spatial dimension {lines[0].split()[:1] if lines else ''}: only 3-D boxes (-3) "
             "are supported")
    fields = _leading_numbers(lines[1]) if len(lines) > 1 else []
    if not fields or fields[0] != 1:
        fail(f"number of fields {lines[1].split()[:1] if len(lines) > 1 else ''}: only the "
             "fluid (1) is supported")
    if len(lines) < 8:
        fail(f"{len(lines)} lines, a single 3-D box needs 8")
    name = lines[2].strip()
    if name[:1] in "cCyYmM":
        fail(f"box type {name!r}: only plain boxes are supported (not circle, cylinder or "
             "multi-segment boxes)")
    counts = _leading_numbers(lines[3])
    if len(counts) < 3 or any(c != int(c) or c == 0 for c in counts[:3]):
        fail(f"element counts line {lines[3]!r}: need 3 non-zero integers")
    row = 4
    edges = []
    for axis, count in zip("xyz", counts[:3]):
        n = abs(int(count))
        if count < 0:          # "lo hi gain": n elements in geometric progression
            values = _leading_numbers(lines[row]) if row < len(lines) else []
            if len(values) < 2:
                fail(f"{axis} line {lines[row] if row < len(lines) else ''!r}: need {axis}0 "
                     f"{axis}1 [gain]")
            ratio = values[2] if len(values) > 2 else 1.0
            edges.append(geometric_edges(n, values[0], values[1], ratio))
            row += 1
        else:                  # n + 1 explicit coordinates, possibly over several lines
            values = []
            while len(values) < n + 1 and row < len(lines):
                values += _leading_numbers(lines[row])
                row += 1
            if len(values) < n + 1:
                fail(f"{axis}: {n} elements need {n + 1} coordinates, found {len(values)}")
            edges.append(np.array(values[:n + 1]))
    if row >= len(lines):
        fail("boundary-condition line missing")
    bc_line = lines[row]
    # genbox reads the line with format (6(a3,1x)): 3 characters per side, 1 separator
    codes = [bc_line[4 * i:4 * i + 3].strip() for i in range(6)]
    if row + 1 < len(lines):
        fail(f"more than one box or field after line {bc_line!r}: only one box is supported")
    sides = dict(zip(BOX_SIDES, codes))
    try:
        check_sides(sides)
    except ConfigError as exc:
        fail(str(exc))
    for axis, e in zip("xyz", edges):
        if not np.all(np.diff(e) > 0):
            fail(f"{axis} coordinates must increase: {e.tolist()}")
    return BoxSpec(edges[0], edges[1], edges[2], sides)


def box_file_mesh(path, wall_id: int = WALL_ID) -> Re2Mesh:
    spec = read_box(path)
    return box_mesh(spec.x_edges, spec.y_edges, spec.z_edges, spec.sides, wall_id=wall_id)


# --- writing and reading .re2 ------------------------------------------------------------------
def header_line(nel: int, nelv: int, text: str) -> bytes:
    head = f"{VERSION}{nel:9d}{3:3d}{nelv:9d} {text}"
    if len(head) > HEADER_BYTES or nel >= 10 ** 9:
        raise ConfigError(f"header {head!r} does not fit in {HEADER_BYTES} characters")
    return head.ljust(HEADER_BYTES).encode("ascii")


def _record_dtype():
    return np.dtype([("element", "<f8"), ("face", "<f8"), ("params", "<f8", (5,)),
                     ("code", f"S{CODE_BYTES}")])


def _records_bytes(faces: Optional[BoundaryFaces]) -> bytes:
    count = 0 if faces is None else len(faces)
    out = np.array([count], dtype="<f8").tobytes()
    if count:
        records = np.zeros(count, dtype=_record_dtype())
        records["element"] = faces.element
        records["face"] = faces.face
        records["params"] = faces.params
        records["code"] = [c.ljust(CODE_BYTES).encode("ascii") for c in faces.code]
        out += records.tobytes()
    return out


def re2_bytes(mesh: Re2Mesh) -> bytes:
    nel = mesh.num_elements
    vertices = np.asarray(mesh.vertices, dtype=float)
    if vertices.shape != (nel, 8, 3) or nel == 0:
        raise ConfigError(f"vertices must have shape (elements, 8, 3), got {vertices.shape}")
    groups = np.zeros(nel) if mesh.groups is None else np.asarray(mesh.groups, dtype=float)
    elements = np.empty((nel, 25), dtype="<f8")
    elements[:, 0] = groups
    elements[:, 1:9] = vertices[:, :, 0]     # x of the 8 corners, then y, then z
    elements[:, 9:17] = vertices[:, :, 1]
    elements[:, 17:25] = vertices[:, :, 2]
    parts = [header_line(nel, mesh.nelv or nel, mesh.header_text),
             np.array([ENDIAN_TEST], dtype="<f4").tobytes(),
             elements.tobytes(),
             _records_bytes(mesh.curves)]
    parts += [_records_bytes(faces) for faces in mesh.boundaries]
    return b"".join(parts)


def write_re2(path, mesh: Re2Mesh) -> Path:
    """Writes `mesh` as a #v002 .re2 file (little endian); returns the path."""
    path = Path(path)
    data = re2_bytes(mesh)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)   # no half-written mesh if interrupted
    return path


def re2_size(num_elements: int, curve_records: int, bc_records: Sequence[int]) -> int:
    """Size in bytes of a #v002 file with these counts."""
    record = RECORD_VALUES * REAL
    return (HEADER_BYTES + 4 + num_elements * 25 * REAL + REAL + curve_records * record
            + sum(REAL + n * record for n in bc_records))


def read_re2(path) -> Re2Mesh:
    """Reads a #v002 .re2 file (either byte order): elements, curved sides, every BC section."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MeshFormatError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) < HEADER_BYTES + 4:
        raise MeshFormatError(f"{path}: {len(data)} bytes, shorter than the header")
    header = data[:HEADER_BYTES].decode("ascii", errors="replace")
    if not header.startswith(VERSION):
        raise MeshFormatError(f"{path}: header starts with {header[:5]!r}, expected {VERSION} "
                              "(8-byte reals)")
    try:
        nel, ndim, nelv = int(header[5:14]), int(header[14:17]), int(header[17:26])
    except ValueError:
        raise MeshFormatError(f"{path}: bad header {header.rstrip()!r}") from None
    if ndim != 3 or nel <= 0 or not 0 < nelv <= nel:
        raise MeshFormatError(f"{path}: header gives nel={nel} ndim={ndim} nelv={nelv}")
    order = _byte_order(data, path)
    offset = HEADER_BYTES + 4
    elements, offset = _take(data, offset, nel * 25, f"{order}f8", path, "elements")
    elements = elements.reshape(nel, 25)
    vertices = np.stack([elements[:, 1:9], elements[:, 9:17], elements[:, 17:25]], axis=2)
    curves, offset = _read_records(data, offset, order, path, "curved sides")
    boundaries = []
    while offset < len(data):
        faces, offset = _read_records(data, offset, order, path,
                                      f"boundary section {len(boundaries) + 1}")
        boundaries.append(faces)
    return Re2Mesh(vertices=vertices, boundaries=boundaries,
                   groups=elements[:, 0].astype(np.int64), curves=curves, nelv=nelv,
                   header_text=header[27:].rstrip())


def _byte_order(data: bytes, path: Path) -> str:
    for order in "<>":
        if np.frombuffer(data, dtype=f"{order}f4", count=1, offset=HEADER_BYTES)[0] == ENDIAN_TEST:
            return order
    raise MeshFormatError(f"{path}: endianness test value (6.54321 after the header) not found")


def _take(data: bytes, offset: int, count: int, dtype: str, path: Path, what: str):
    size = count * np.dtype(dtype).itemsize
    if offset + size > len(data):
        raise MeshFormatError(f"{path}: file ends inside the {what} ({len(data)} bytes, "
                              f"{offset + size} needed)")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset), offset + size


def _read_records(data: bytes, offset: int, order: str, path: Path, what: str):
    (count,), offset = _take(data, offset, 1, f"{order}f8", path, f"{what} count")
    if count < 0 or count != int(count):
        raise MeshFormatError(f"{path}: {what}: bad record count {count}")
    dtype = _record_dtype().newbyteorder(order) if order == ">" else _record_dtype()
    size = int(count) * dtype.itemsize
    if offset + size > len(data):
        raise MeshFormatError(f"{path}: file ends inside the {what} ({len(data)} bytes, "
                              f"{offset + size} needed)")
    records = np.frombuffer(data, dtype=dtype, count=int(count), offset=offset)
    faces = BoundaryFaces(
        element=records["element"].astype(np.int64), face=records["face"].astype(np.int64),
        params=records["params"].astype(float).reshape(-1, 5),
        code=np.array([c.decode("ascii", errors="replace")[:3] for c in records["code"]],
                      dtype="<U3"))
    return faces, offset + size
