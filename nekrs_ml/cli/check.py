"""`nekrs-ml check`: qualify this machine (nekrs_ml.check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands import command


@command("check", "qualify this machine: redis-server, MPI, compiler, torch and, on every device, "
                  "in-process inference, a model worker and a short train+infer run")
def _check(parser: argparse.ArgumentParser):
    parser.add_argument("--device", action="append", dest="devices",
                        help="check only this device (cpu, cuda:N; repeatable; default: every "
                             "device torch offers)")
    parser.add_argument("--run-steps", type=int, default=200,
                        help="steps of the stand-in train+infer run per device (0: no run; "
                             "default 200)")
    parser.add_argument("--keep", metavar="DIR",
                        help="leave the check's run directories and logs under DIR")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON at the end")

    def run(args) -> int:
        from .. import check

        if args.run_steps < 0:
            print("nekrs-ml check: --run-steps must be >= 0", file=sys.stderr)
            return 2
        keep = Path(args.keep).absolute() if args.keep else None
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)

        def echo(row):
            print(f"nekrs-ml check: {row.check} [{row.device}] {'ok' if row.ok else 'FAIL'}"
                  f"{f' ({row.seconds:.1f} s)' if row.seconds is not None else ''}: {row.detail}",
                  file=sys.stderr, flush=True)

        rows = check.run_checks(args.devices, args.run_steps, echo, keep)
        print(check.as_json(rows) if args.json else check.table(rows))
        failed = [row for row in rows if not row.ok]
        if failed:
            print(f"nekrs-ml check: {len(failed)} check(s) failed: "
                  f"{', '.join(f'{row.check} [{row.device}]' for row in failed)}", file=sys.stderr)
            return 1
        print(f"nekrs-ml check: every check passed ({len(rows)})", file=sys.stderr)
        return 0
    return run
