"""The ``nekrs-ml`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .errors import NekrsMLError

# name -> (help, function adding arguments, handler); filled by the register_* functions below
# and by the modules of the later workflows (train, reproduce, run, bench ...).
_COMMANDS: Dict[str, tuple] = {}


def command(name: str, help: str):
    """Registers ``fn(parser)`` as the argument builder of a sub-command; it returns the handler."""
    def wrap(build: Callable[[argparse.ArgumentParser], Callable]):
        _COMMANDS[name] = (help, build)
        return build
    return wrap


def package_dir() -> Path:
    return Path(__file__).resolve().parent


# --- nekrs-ml config ------------------------------------------------------------------------
@command("config", "print what a case build needs to compile and link against nekrs_ml")
def _config(parser: argparse.ArgumentParser):
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--includes", action="store_true", help="compiler flags: -I<dir>")
    group.add_argument("--libs", action="store_true", help="linker flags: -L<dir> -lnekrsml -Wl,-rpath")
    group.add_argument("--cmake-dir", action="store_true",
                       help="directory for find_package(nekrs_ml) (nekrs_ml_DIR)")
    group.add_argument("--udf-cmake", action="store_true", help="path of the case helper udf.cmake")
    group.add_argument("--udf-env", action="store_true",
                       help="`export` lines of NEKRS_ML_UDF_CMAKE and NEKRS_ML_CMAKE_DIR for a "
                            "NekRS case build")

    def run(args) -> int:
        base = package_dir()
        lib = base / "lib"
        if args.includes:
            print(f"-I{base / 'include'}")
        elif args.libs:
            print(f"-L{lib} -lnekrsml -Wl,-rpath,{lib}")
        elif args.cmake_dir:
            print(lib / "cmake" / "nekrs_ml")
        elif args.udf_env:
            for name, value in udf_build_env().items():
                print(f"export {name}={value}")
        else:
            print(lib / "cmake" / "nekrs_ml" / "udf.cmake")
        return 0
    return run


def udf_build_env() -> dict:
    """What a NekRS case's udf.cmake reads to find nekrs_ml (docs/nekrs.md)."""
    cmake_dir = package_dir() / "lib" / "cmake" / "nekrs_ml"
    return {"NEKRS_ML_UDF_CMAKE": str(cmake_dir / "udf.cmake"), "NEKRS_ML_CMAKE_DIR": str(cmake_dir)}


# --- nekrs-ml db ----------------------------------------------------------------------------
@command("db", "start, stop or inspect the orchestrator (redis-server processes)")
def _db(parser: argparse.ArgumentParser):
    from . import orchestrator

    sub = parser.add_subparsers(dest="db_command", required=True, metavar="start|stop|status|env")
    start = sub.add_parser("start", help="start the servers; prints one JSON object when all answer")
    start.add_argument("--dir", required=True, help="run directory (sockets, logs, password file)")
    start.add_argument("--mode", choices=orchestrator.MODES, default="single")
    start.add_argument("--transport", choices=("tcp", "unix"), default="tcp",
                       help="single mode: TCP on --bind or a Unix socket in --dir")
    start.add_argument("--shards", type=int, default=3, help="cluster mode: number of masters (>= 3)")
    start.add_argument("--bind", default="127.0.0.1", help="address TCP servers listen on")
    start.add_argument("--port", type=int, help="TCP port of the (first) server; default: a free one")
    start.add_argument("--maxmemory", default="1gb", help="memory cap per server (Redis units: 512mb, 4gb)")
    start.add_argument("--persist", action="store_true", help="keep the data on disk (AOF + snapshots)")
    start.add_argument("--redis-server", help="redis-server (or valkey-server) binary to run")
    start.add_argument("--namespace", default="nkml", help="key prefix of the run (docs/protocol.md)")
    stop = sub.add_parser("stop", help="stop this node's servers of a run directory")
    stop.add_argument("--dir", required=True)
    status = sub.add_parser("status", help="memory, keys and clients per server (JSON)")
    status.add_argument("--dir", required=True)
    env = sub.add_parser("env", help="print `export` lines of the environment clients connect from")
    env.add_argument("--dir", required=True)

    def run(args) -> int:
        Orch = orchestrator.Orchestrator
        if args.db_command == "start":
            info = Orch(args.dir, mode=args.mode, transport=args.transport, shards=args.shards,
                        bind=args.bind, port=args.port, maxmemory=args.maxmemory,
                        persistence=args.persist, redis_server=args.redis_server,
                        namespace=args.namespace).start()
            print(json.dumps(info, indent=2))
        elif args.db_command == "stop":
            stopped = Orch.stop_dir(args.dir)
            print(json.dumps({"stopped": stopped}))
        elif args.db_command == "status":
            print(json.dumps(Orch.status(args.dir), indent=2))
        else:
            for name, value in Orch.info(args.dir)["env"].items():
                print(f"export {name}={value}")
        return 0
    return run


def _load_plugins() -> None:
    """Sub-commands of the workflow modules register themselves on import."""
    import importlib

    for module in ("nekrs_ml.bench", "nekrs_ml.reproduce", "nekrs_ml.train", "nekrs_ml.launch",
                   "nekrs_ml.serve", "nekrs_ml.registry"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency inside an existing module is a bug
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="nekrs-ml",
        description="Online training and inference for NekRS through an in-memory database.")
    parser.add_argument("--version", action="version", version=f"nekrs_ml {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, build) in _COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(handler=build(sub_parser))
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NekrsMLError as exc:
        print(f"nekrs-ml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nekrs-ml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the imported module: sub-commands register in nekrs_ml.cli, not in __main__.
    from nekrs_ml import cli as _cli

    sys.exit(_cli.main())
