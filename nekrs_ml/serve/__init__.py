"""Online inference next to the database: model workers (`nekrs-ml serve`) and model deployment
(`nekrs-ml deploy`, `nekrs-ml rollback`). The solver side is nekrs_ml.inference (Python) and
nekrs_ml::InferenceClient (C++)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .. import environment
from ..cli import command


def _namespace(args) -> str:
    return args.namespace or os.environ.get(environment.NAMESPACE) or "nkml"


def _add_namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", help=f"key prefix of the run (default: "
                        f"${environment.NAMESPACE}, else nkml)")


@command("serve", "run a model worker: evaluate the published models for the solver ranks")
def _serve(parser: argparse.ArgumentParser):
    parser.add_argument("par", nargs="?", help="case .par: defaults for the options below from "
                        "its [NEKRS_ML] section (workerDevice, maxBatch, maxWaitMs, reloadInterval)")
    parser.add_argument("--worker", type=int, default=0,
                        help="worker index: serves the ranks R with R mod workers = index")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: workerDevice, else cpu)")
    parser.add_argument("--max-batch", type=int, help="most requests in one forward pass")
    parser.add_argument("--max-wait-ms", type=float, help="wait for more requests after the first")
    parser.add_argument("--reload-interval", type=float, help="seconds between version checks")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--export", action="store_true",
                        help="evaluate the torch.export form of a model when it was published")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    _add_namespace(parser)

    def run(args) -> int:
        from ..client import Client
        from ..config import load_par
        from .worker import ModelWorker

        ml = load_par(args.par)["nekrs_ml"] if args.par else None

        def option(value, key, default):
            return value if value is not None else (ml[key] if ml else default)

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        ns = args.namespace or os.environ.get(environment.NAMESPACE) or (
            ml["namespace"] if ml else "nkml")
        with Client.from_env() as client:
            worker = ModelWorker(
                client, ns, worker=args.worker, device=option(args.device, "workerDevice", "cpu"),
                max_batch=option(args.max_batch, "maxBatch", 64),
                max_wait=option(args.max_wait_ms, "maxWaitMs", 0.5) / 1e3,
                reload_interval=option(args.reload_interval, "reloadInterval", 0.25),
                prefer_export=args.export,
                log=lambda text: print(f"nekrs-ml serve: {text}", flush=True))

            def on_signal(signum, frame):
                worker.stop()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            print(f"nekrs-ml serve: worker {args.worker} on {worker.device}, queue "
                  f"{worker.queue!r}", flush=True)
            stats = worker.serve(args.duration)
        sizes = stats.batch_sizes
        print(f"nekrs-ml serve: stopped after {stats.requests} requests in {stats.batches} "
              f"batches (mean batch {sum(sizes) / len(sizes) if sizes else 0:.1f}), "
              f"{stats.errors} error replies, {stats.reloads} reloads", flush=True)
        return 0
    return run


@command("deploy", "publish a model file (TorchScript or torch.export .pt2) as a new version")
def _deploy(parser: argparse.ArgumentParser):
    parser.add_argument("model", help="TorchScript archive (torch.jit.save) or torch.export program")
    parser.add_argument("--name", required=True, help="model name (the case's modelName)")
    parser.add_argument("--inputs", type=int,
                        help="number of input features (default: read from the first layer)")
    _add_namespace(parser)

    def run(args) -> int:
        from ..client import Client
        from .deploy import deploy

        with Client.from_env() as client:
            version = deploy(client, _namespace(args), args.name, args.model, args.inputs)
        print(json.dumps({"name": args.name, "version": version}))
        return 0
    return run


@command("rollback", "make an earlier version of a model the current one")
def _rollback(parser: argparse.ArgumentParser):
    parser.add_argument("name", help="model name")
    parser.add_argument("--to", type=int, dest="version",
                        help="version to serve (default: the one before the current)")
    _add_namespace(parser)

    def run(args) -> int:
        from .. import registry
        from ..client import Client

        with Client.from_env() as client:
            version = registry.rollback(client, _namespace(args), args.name, args.version)
        print(json.dumps({"name": args.name, "version": version}))
        print(f"nekrs-ml rollback: {args.name!r} now serves v{version}", file=sys.stderr)
        return 0
    return run
