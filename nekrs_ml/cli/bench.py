"""`nekrs-ml bench NAME`: benchmarks that print JSON records, each measured side by side with
its baseline in the same run (docs/benchmarks.md).

A benchmark is a module with ``add_arguments(parser)``, ``run(args, log) -> records`` and
``print_table(records)`` (its first docstring line is the help); adding one is one line in
BENCHMARKS."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from ..bench.harness import machine
from .commands import command

BENCHMARKS = {
    "transfer": "nekrs_ml.bench.transfer",
    "stream": "nekrs_ml.bench.stream",
    "inference": "nekrs_ml.bench.inference",
    "handoff": "nekrs_ml.bench.handoff",
    "scaling": "nekrs_ml.bench.scaling",
}


@command("bench", "run a benchmark and print its records as JSON")
def _bench(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="|".join(BENCHMARKS))
    modules = {}
    for name, module_name in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        bench_parser = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        bench_parser.add_argument("--json", action="store_true", help="print only the JSON list")
        bench_parser.add_argument("--output", help="also write the JSON list to this file")
        module.add_arguments(bench_parser)
        modules[name] = module
    sub.metavar = "|".join(modules)

    def run(args) -> int:
        module = modules[args.bench_command]
        log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
        # other work on the machine at the start (1, 5, 15 min): on a shared machine it
        # explains much of a run's spread
        load_at_start = [round(load, 2) for load in os.getloadavg()]
        records = module.run(args, log)
        measured_on = {**machine(), "load_average_at_start": load_at_start}
        for record in records:  # numbers mean little without the machine they came from
            record.setdefault("machine", measured_on)
        text = json.dumps(records, indent=1)
        if args.output:
            with open(args.output, "w") as handle:
                handle.write(text + "\n")
        if args.json:
            print(text)
        else:
            module.print_table(records)
        return 0
    return run
