"""`nekrs-ml models`, `models export`, `deploy`, `rollback` and `compile`: the model registry of
a run's database (nekrs_ml.models.registry), model files (nekrs_ml.models.model_file,
nekrs_ml.models.deploy) and the AOTInductor packages of in-process inference
(nekrs_ml.models.aot)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import environment
from ..errors import ConfigError
from .commands import command
from .options import add_namespace_option

EXPORT = "export"


@command("models", "list the models published in the run's database, show one, or export one "
                   "to a deployable file (`models export NAME --to FILE`)")
def _models(parser: argparse.ArgumentParser):
    parser.add_argument("name", nargs="?", metavar="NAME | export",
                        help="show this model: its versions and metadata; `export NAME` writes "
                             "it to --to FILE")
    parser.add_argument("export_name", nargs="?", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--version", type=int, help="with NAME: this version instead of the latest")
    parser.add_argument("--output", help="with NAME: write the model blob (only) to this file")
    parser.add_argument("--to", help="with `export NAME`: the deployable model file to write "
                        "(metadata FILE.json and torch.export form FILE.pt2 beside it)")
    add_namespace_option(parser)

    def run(args) -> int:
        from ..models import aot, registry
        from ..client import Client

        ns = environment.resolve_namespace(args.namespace)
        exporting = args.name == EXPORT and args.export_name is not None
        if args.export_name is not None and not exporting:
            raise ConfigError(f"unexpected argument {args.export_name!r}; use `nekrs-ml models "
                              "NAME` or `nekrs-ml models export NAME --to FILE`")
        if exporting and not args.to:
            raise ConfigError("models export: give the file to write with --to FILE")
        with Client.from_env() as client:
            if exporting:
                return _export(client, ns, args.export_name, args.version, args.to)
            if args.name is None:
                print(json.dumps(registry.models(client, ns), indent=2))
                return 0
            blob, meta = registry.load(client, ns, args.name, args.version)
            if args.output:
                Path(args.output).write_bytes(blob)
            print(json.dumps(dict(meta, versions=registry.versions(client, ns, args.name),
                                  packages=aot.packages(client, ns, args.name)), indent=2))
        return 0
    return run


def _export(client, ns: str, name: str, version, path: str) -> int:
    from ..models.model_file import export_version, metadata_path

    meta = export_version(client, ns, name, version, path)
    print(json.dumps({"name": name, "version": meta["version"], "file": str(Path(path).absolute()),
                      "metadata": str(metadata_path(Path(path).absolute())),
                      "export_file": meta["export_file"]}, indent=2))
    return 0


@command("deploy", "publish a model file (torch.export .pt2, TorchScript, ONNX .onnx, TensorFlow "
         "SavedModel directory or frozen .pb, TensorFlow Lite .tflite) as a new version")
def _deploy(parser: argparse.ArgumentParser):
    parser.add_argument("model", help="torch.export program, TorchScript archive (torch.jit.save), "
                        ".onnx, TensorFlow SavedModel directory or frozen graph .pb, .tflite, "
                        "or a model file of a training run / `models export` (its metadata "
                        "NAME.json beside it is published with it)")
    parser.add_argument("--name", required=True, help="model name (the case's modelName)")
    parser.add_argument("--inputs", type=int,
                        help="number of input features (default: from the metadata, else read "
                             "from the first layer)")
    parser.add_argument("--outputs", type=int,
                        help="number of outputs the model must return per point (default: from "
                             "the metadata, if any); a model that disagrees is refused")
    parser.add_argument("--tf-inputs", nargs="+", metavar="NAME",
                        help="a TensorFlow frozen graph (.pb): its input operation (as RedisAI's "
                             "INPUTS; default: its one placeholder)")
    parser.add_argument("--tf-outputs", nargs="+", metavar="NAME",
                        help="a TensorFlow frozen graph (.pb): its output operation (as RedisAI's "
                             "OUTPUTS; default: the one operation whose result nothing takes)")
    parser.add_argument("--features", choices=("dimensional", "wall_units"),
                        help="what the model maps: velocity samples to wall shear stress in the "
                        "solver's units (dimensional), or wall-scaled u h / nu to tau h^2 / nu^2 "
                        "(wall_units; the solver scales before and after); default: the model "
                        "file's metadata, else dimensional. Stored in the model's meta")
    add_namespace_option(parser)

    def run(args) -> int:
        from ..client import Client
        from ..models.deploy import deploy

        names = None
        if args.tf_inputs or args.tf_outputs:
            if not (args.tf_inputs and args.tf_outputs):
                raise ConfigError("--tf-inputs and --tf-outputs go together")
            names = (args.tf_inputs, args.tf_outputs)
        with Client.from_env() as client:
            version = deploy(client, environment.resolve_namespace(args.namespace), args.name,
                             args.model, args.inputs, n_out=args.outputs, tf_names=names,
                             features=args.features)
        print(json.dumps({"name": args.name, "version": version}))
        return 0
    return run


@command("rollback", "make an earlier version of a model the current one")
def _rollback(parser: argparse.ArgumentParser):
    parser.add_argument("name", help="model name")
    parser.add_argument("--to", type=int, dest="version",
                        help="version to serve (default: the one before the current)")
    add_namespace_option(parser)

    def run(args) -> int:
        from ..models import registry
        from ..client import Client

        with Client.from_env() as client:
            version = registry.rollback(client, environment.resolve_namespace(args.namespace),
                                        args.name, args.version)
        print(json.dumps({"name": args.name, "version": version}))
        print(f"nekrs-ml rollback: {args.name!r} now serves v{version}", file=sys.stderr)
        return 0
    return run


@command("compile", "compile a model version's graph to an AOTInductor package for in-process "
                    "inference (once per graph, device kind and torch version)")
def _compile(parser: argparse.ArgumentParser):
    parser.add_argument("--model", required=True, help="model name (the case's modelName)")
    parser.add_argument("--version", type=int, help="version whose graph to compile (default: "
                        "the current one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_namespace_option(parser)

    def run(args) -> int:
        import signal

        from ..models import aot
        from ..client import Client

        def stop(signum, frame):  # a stopped compilation says so in the registry
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        with Client.from_env() as client:
            graph, compiled = aot.ensure_package(
                client, environment.resolve_namespace(args.namespace), args.model, args.version,
                args.device, log=lambda text: print(f"nekrs-ml compile: {text}", file=sys.stderr,
                                                    flush=True))
        print(json.dumps({"model": args.model, "graph": graph, "compiled": compiled,
                          "device": aot.device_kind(args.device), "torch": aot.torch_version()}))
        return 0
    return run
