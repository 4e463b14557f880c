"""`nekrs-ml run CASE.par --solver reproducer|nekrs`: the whole workflow (nekrs_ml.launch)."""

from __future__ import annotations

import argparse

from .commands import command


@command("run", "run a case: orchestrator + trainer + solver, with progress and a report")
def _run(parser: argparse.ArgumentParser):
    parser.add_argument("par", help="case .par file with a [NEKRS_ML] section")
    parser.add_argument("--solver", choices=("reproducer", "nekrs"), default="reproducer")
    parser.add_argument("--run-dir", help="run directory (default: runs/<case name>)")
    parser.add_argument("--trainer-grace", type=float, default=120.0,
                        help="seconds the trainer may keep going after the solver finished")

    def run(args) -> int:
        from ..launch import execute

        return execute(args.par, args.solver, args.run_dir, args.trainer_grace)
    return run


@command("profile", "draw profile.png of a run (U+ against y+ with DNS and the log law), "
                    "beside baseline runs")
def _profile(parser: argparse.ArgumentParser):
    parser.add_argument("run_dir", help="run directory of `nekrs-ml run` (with report.json)")
    parser.add_argument("--baseline", action="append", default=[], metavar="RUN_DIR",
                        help="another run's directory to draw beside it (repeatable)")
    parser.add_argument("--output", help="the PNG to write (default: RUN_DIR/profile.png)")

    def profile(args) -> int:
        from pathlib import Path

        from ..launch.flow import plot_profile, read_flow

        run_dir = Path(args.run_dir)
        flow = read_flow(run_dir)
        baselines = [(Path(other).name, read_flow(Path(other))) for other in args.baseline]
        output = Path(args.output) if args.output else run_dir / "profile.png"
        plot_profile(output, flow, label=run_dir.name, baselines=baselines)
        print(output)
        return 0
    return profile
