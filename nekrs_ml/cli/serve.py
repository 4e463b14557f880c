"""`nekrs-ml serve`: a model worker next to the database (nekrs_ml.serve.worker)."""

from __future__ import annotations

import argparse
import signal

from .commands import command
from .options import add_namespace_option


@command("serve", "run a model worker: evaluate the published models for the solver ranks")
def _serve(parser: argparse.ArgumentParser):
    parser.add_argument("par", nargs="?", help="case .par: defaults for the options below from "
                        "its [NEKRS_ML] section (workerDevice, maxBatch, maxBatchPoints, maxWaitMs, "
                        "reloadInterval, namespace)")
    parser.add_argument("--worker", type=int, default=0,
                        help="worker index: serves the ranks R with R mod workers = index")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: workerDevice, else cpu)")
    parser.add_argument("--max-batch", type=int, help="most requests in one forward pass")
    parser.add_argument("--max-wait-ms", type=float, help="wait for more requests after the first")
    parser.add_argument("--max-batch-points", type=int,
                        help="most wall points in one forward pass (0: 16384 on a CPU, no limit "
                             "on a GPU)")
    parser.add_argument("--reload-interval", type=float, help="seconds between version checks")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--export", action="store_true",
                        help="evaluate the torch.export form of a model when it was published")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--smartredis", action="store_true",
                        help="also run the models and scripts of SmartRedis clients "
                        "(servers started with --smartredis; default: smartredisCompat)")
    parser.add_argument("--dir", help="run directory of `nekrs-ml db start`: connect to its "
                        "servers (default: the NEKRS_ML_* environment)")
    add_namespace_option(parser)

    def run(args) -> int:
        import os

        from .. import environment
        from ..client import Client
        from ..orchestrator import Orchestrator
        from ..serve.settings import WorkerSettings
        from ..serve.smartredis import SmartRedisBridge
        from ..serve.worker import ModelWorker

        env = dict(os.environ, **Orchestrator.info(args.dir)["env"]) if args.dir else os.environ
        settings = WorkerSettings.resolve(
            args.par, namespace=args.namespace or (env[environment.NAMESPACE] if args.dir else None),
            worker=args.worker, device=args.device,
            max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
            max_batch_points=args.max_batch_points, reload_interval=args.reload_interval, prefer_export=args.export,
            threads=args.threads, duration=args.duration, smartredis=args.smartredis)
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        options = environment.connection_options(env)
        with Client(**options) as client:
            worker = ModelWorker(
                client, settings.namespace, worker=settings.worker, device=settings.device,
                max_batch=settings.max_batch, max_wait=settings.max_wait_s,
                max_batch_points=settings.max_batch_points,
                reload_interval=settings.reload_interval_s, prefer_export=settings.prefer_export,
                log=lambda text: print(f"nekrs-ml serve: {text}", flush=True))

            def on_signal(signum, frame):
                worker.stop()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            bridge = None
            if settings.smartredis:
                bridge = SmartRedisBridge(
                    options["addresses"], options["password"], worker.device,
                    log=lambda text: print(f"nekrs-ml serve: SmartRedis: {text}", flush=True),
                    timeout=options.get("timeout", 10.0)).start()
            print(f"nekrs-ml serve: worker {settings.worker} on {worker.device}, queue "
                  f"{worker.queue!r}" + (", SmartRedis jobs of " + ", ".join(options["addresses"])
                                         if bridge else ""), flush=True)
            try:
                stats = worker.serve(settings.duration_s)
            finally:
                if bridge:
                    bridge.stop()
            if bridge:
                print(f"nekrs-ml serve: SmartRedis: {bridge.jobs} jobs run, {bridge.errors} "
                      "failed", flush=True)
        sizes = stats.batch_sizes
        print(f"nekrs-ml serve: stopped after {stats.requests} requests in {stats.batches} "
              f"batches (mean batch {sum(sizes) / len(sizes) if sizes else 0:.1f}), "
              f"{stats.errors} error replies, {stats.reloads} reloads", flush=True)
        return 0
    return run
