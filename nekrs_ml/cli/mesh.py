"""``nekrs-ml mesh channel``: the channel's .re2 without Nek5000's genbox (nekrs_ml.mesh)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import mesh
from ..errors import ConfigError
from .commands import command


def add_mesh_arguments(parser: argparse.ArgumentParser):
    """Arguments of ``nekrs-ml mesh``; returns the handler."""
    sub = parser.add_subparsers(dest="mesh_kind", required=True, metavar="channel")
    channel = sub.add_parser(
        "channel", help="channel box: walls (boundary ID 1) on the y sides, periodic in x and z",
        description="Writes a channel box as a NekRS .re2 file (#v002). Default box: the unit "
                    "cube that cases/turbChannel_wallModel map to the channel in UDF_Setup.")
    channel.add_argument("--elements", type=int, nargs=3, metavar=("NX", "NY", "NZ"),
                         help="number of elements in x, y (wall-normal) and z")
    extent = channel.add_mutually_exclusive_group()
    extent.add_argument("--box", type=float, nargs=6, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"),
                        help="box corners (default 0 1 0 1 0 1)")
    extent.add_argument("--lengths", type=float, nargs=3, metavar=("LX", "LY", "LZ"),
                        help="box [0,LX] x [-LY/2,LY/2] x [0,LZ] (walls at y = +-LY/2)")
    channel.add_argument("--stretch", type=float, default=0.0, metavar="BETA",
                         help="cluster the element boundaries towards the walls: y = "
                              "tanh(BETA eta)/tanh(BETA), eta uniform in [-1, 1] (default 0: "
                              "uniform)")
    channel.add_argument("--from-box", metavar="FILE.box",
                         help="take elements, coordinates and boundary conditions from a genbox "
                              "input file (one 3-D box, P and W sides)")
    channel.add_argument("-o", "--output", metavar="FILE.re2",
                         help="output file (default with --from-box: FILE.re2 beside FILE.box)")

    def run(args) -> int:
        output = mesh_output(args)
        if args.from_box:
            if args.elements or args.box or args.lengths or args.stretch:
                raise ConfigError("--from-box takes elements, coordinates and boundary conditions "
                                  "from the .box file: drop --elements/--box/--lengths/--stretch")
            grid = mesh.box_file_mesh(args.from_box)
        else:
            if args.elements is None:
                raise ConfigError("give --elements NX NY NZ (or --from-box FILE.box)")
            box = mesh.UNIT_BOX
            if args.box:
                box = tuple(zip(args.box[0::2], args.box[1::2]))
            elif args.lengths:
                lx, ly, lz = args.lengths
                for name, value in zip(("LX", "LY", "LZ"), args.lengths):
                    if not value > 0:
                        raise ConfigError(f"--lengths: {name} must be > 0, got {value}")
                box = ((0.0, lx), (-ly / 2, ly / 2), (0.0, lz))
            grid = mesh.channel_mesh(args.elements, box=box, stretch=args.stretch)
        mesh.write_re2(output, grid)
        print(describe(output, grid))
        return 0
    return run


def mesh_output(args) -> Path:
    if args.output:
        output = Path(args.output)
    elif args.from_box:
        output = Path(args.from_box).with_suffix(".re2")
    else:
        raise ConfigError("give the output file: -o FILE.re2")
    if not output.parent.is_dir():
        raise ConfigError(f"-o {output}: directory {output.parent} does not exist")
    return output


def describe(path: Path, grid) -> str:
    lo = grid.vertices.min(axis=(0, 1))
    hi = grid.vertices.max(axis=(0, 1))
    extent = " x ".join(f"[{a:g}, {b:g}]" for a, b in zip(lo, hi))
    faces = grid.boundaries[0]
    walls = int((faces.code == "W  ").sum())
    periodic = int((faces.code == "P  ").sum())
    return (f"wrote {path}: {grid.num_elements} elements in {extent}, {walls} wall faces "
            f"(boundary ID {mesh.WALL_ID}), {periodic} periodic faces")


@command("mesh", "write a NekRS mesh (.re2) without Nek5000's genbox")
def _mesh(parser: argparse.ArgumentParser):
    return add_mesh_arguments(parser)
