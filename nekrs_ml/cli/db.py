"""`nekrs-ml db start|stop|status|env`: the orchestrator's redis-server processes."""

from __future__ import annotations

import argparse
import json

from .. import environment
from .commands import command
from .options import add_namespace_option


@command("db", "start, stop or inspect the orchestrator (redis-server processes)")
def _db(parser: argparse.ArgumentParser):
    from .. import orchestrator

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
    start.add_argument("--smartredis", action="store_true",
                       help="also answer the RedisAI commands of SmartRedis clients (nkml_ai "
                       "module; no password: needs --transport unix, --mode colocated or "
                       "--smartredis-tcp); run their models with `nekrs-ml serve --smartredis`")
    start.add_argument("--smartredis-tcp", action="store_true",
                       help="with --smartredis: allow TCP servers without a password (a Redis "
                       "Cluster needs it); anyone who reaches the ports gets in")
    add_namespace_option(start)
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
                        namespace=environment.resolve_namespace(args.namespace),
                        smartredis=args.smartredis, smartredis_tcp=args.smartredis_tcp).start()
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
