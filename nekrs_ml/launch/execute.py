"""`nekrs-ml run`'s command: the run directory (private, locked, cleared of an earlier run's
outputs), the signals that stop the run, the stop, the report, the last line and the exit
code."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import rundir
from ..errors import ConfigError, DiskFullError, NekrsMLError
from ..orchestrator import Orchestrator
from ..rundir import RunLock
from .run import Run
from .run_report import read_json, release_reserve, reserve_report_space, write_report_file
from .summary import summarise
from .supervisor import Supervisor
from .watchdog import Guard

EXIT_OK, EXIT_SOLVER, EXIT_TRAINER, EXIT_ORCHESTRATOR, EXIT_INFERENCE, EXIT_NO_MODEL = (
    0, 1, 3, 4, 5, 6)
EXIT_DISK_FULL = 7
EXIT_DATA_DROPPED = 8
EXIT_MEMBER = 9  # an ensemble member failed; the others finished (memberFailure = continue)
EXIT_INTERRUPTED = 130
# report.json's status -> the exit code (an unknown status counts as the solver's failure)
EXIT_CODES = {"ok": EXIT_OK, "solver": EXIT_SOLVER, "trainer": EXIT_TRAINER,
              "orchestrator": EXIT_ORCHESTRATOR, "inference": EXIT_INFERENCE,
              "no_model": EXIT_NO_MODEL, "disk_full": EXIT_DISK_FULL,
              "data_dropped": EXIT_DATA_DROPPED, "member": EXIT_MEMBER}
RUN_LOCK = "run.lock"  # held by the live run of a run directory
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Outputs of an earlier run in the same directory, removed before a new run starts.
STALE_OUTPUTS = ("report.json", "solver.json", "trainer_history.jsonl", "trainer.json", "loss.png",
                 "tau_w.png", "solver.log", "trainer.log", "watchdog.log")


def stale_outputs(run_dir: Path) -> List[Path]:
    """What an earlier run left in run_dir: its outputs, worker logs and the model files its
    trainer.json names (so a failed rerun never leaves an old model looking current)."""
    paths = [run_dir / name for name in STALE_OUTPUTS] + sorted(run_dir.glob("worker*.log"))
    previous = read_json(run_dir / "trainer.json") or {}
    for key in ("model_file", "model_export_file"):
        if previous.get(key):
            model = Path(previous[key])
            if model.parent == run_dir:
                paths += [model, model.with_suffix(".json")]
    return paths


def execute(par: str, solver: str, run_dir: Optional[str], trainer_grace: float = 120.0) -> int:
    par_path = Path(par).absolute()
    if not par_path.exists():
        raise ConfigError(f"case file {par} not found")
    if solver == "nekrs":  # NekRS reports these late or not at all: refuse before starting
        from .nekrs_case import check_case

        check_case(par_path)
    run_path = Path(run_dir or Path("runs") / par_path.stem).absolute()
    # --- the run directory is this user's and closed to everyone else (0700), like the
    # servers' directories: nothing in it (a link in place of an output) can have been planted
    rundir.private_dir(run_path)
    # --- one live run per directory: refused before anything in it is touched -------------
    lock = RunLock(run_path / RUN_LOCK, f"run directory {run_path}",
                   "wait for that run to end (or stop it with Ctrl-C / kill PID), or pass "
                   "another --run-dir").acquire()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        guard = Guard(run_path, run_path / "db")  # stops everything if this process dies
        try:
            return _execute_locked(par_path, solver, run_path, trainer_grace, Supervisor(guard))
        finally:
            guard.close()
    finally:
        lock.release()
        for sig, handler in previous.items():  # only now: a late signal must not interrupt
            signal.signal(sig, handler)        # the stop, the report or the watchdog's end


def _execute_locked(par_path: Path, solver: str, run_path: Path, trainer_grace: float,
                    supervisor: Supervisor) -> int:
    for stale in stale_outputs(run_path):  # a reused run directory must not mix two runs' results
        stale.unlink(missing_ok=True)
    reserve_report_space(run_path)
    try:
        return _run(_run_class(par_path)(par_path, solver, run_path, trainer_grace, supervisor))
    finally:
        release_reserve(run_path)


def _run_class(par_path: Path):
    """Run, or EnsembleRun for a .par with an [ENSEMBLE] section (docs/ensembles.md)."""
    from .ensemble_case import is_ensemble

    if is_ensemble(par_path):
        from .ensemble import EnsembleRun

        return EnsembleRun
    return Run


def _run(run: Run) -> int:
    run_path = run.run_dir
    status, message, exit_codes = "launcher", "", {}
    interrupted = False

    # --- signals: the first one (Ctrl-C, SIGTERM, a closed terminal) stops the run; any
    # later one only hurries the stop along, which still stops every part and writes the report
    def while_stopping(signum, frame):
        run.supervisor.hurry()
        print(f"\nnekrs-ml run: {signal.Signals(signum).name} while stopping: stopping the parts "
              "without waiting for a clean exit", file=sys.stderr, flush=True)

    def on_signal(signum, frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, while_stopping)
        raise KeyboardInterrupt

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        try:
            run.start_orchestrator()
        except NekrsMLError as exc:
            status, message = "orchestrator", str(exc)
            raise
        print(f"nekrs-ml run: database {run.info['mode']} at {', '.join(run.info['addresses'])}; "
              f"run directory {run_path}", flush=True)
        try:
            run.start_parts()
        except NekrsMLError as exc:
            message = str(exc)
            raise
        status = run.supervise()
    except KeyboardInterrupt:
        interrupted, status = True, "interrupted"
    except DiskFullError as exc:  # the launcher's own write (a log, a host file, ...)
        status, message = "disk_full", str(exc)
    finally:
        for sig in STOP_SIGNALS:  # from here on a signal must not cut the stop short
            signal.signal(sig, while_stopping)
        exit_codes = run.stop_parts()
        status, message = _outcome(run, status, message, exit_codes)
        try:
            # written before the servers stop: a stop that fails or a launcher killed while
            # stopping them still leaves the real report
            data = run.gather_report(status, exit_codes, message)
            write_report_file(run_path, data)
        finally:
            run.stop_node_agents()  # after the report: it reads this host's server
            Orchestrator.stop_dir(run_path / "db")
        if run.placement is not None:  # what each agent read from its server as it stopped
            data["nodes"] = run.node_counters()
            write_report_file(run_path, data)
    summarise(data, run_path)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_CODES.get(data["status"], EXIT_SOLVER)


def _outcome(run: Run, status: str, message: str,
             exit_codes: Dict[str, Optional[int]]) -> Tuple[str, str]:
    """The run's status and message once every part is stopped: a failed part's message
    names its exit code and quotes its log, and a full disk is named as the cause."""
    disk = run.disk_problem() if status in ("solver", "trainer", "launcher") else ""
    if disk:
        status = "disk_full"
        message = f"{disk}; every part was stopped"
        if "--run-dir" not in disk:
            message += (". Free space there, or choose a run directory on another file "
                        "system (--run-dir)")
    elif run.failure_message:
        message = run.failure_message
    elif status in run.parts:
        part = run.parts[status]
        message = (f"{status} failed with exit code {exit_codes.get(status)}; last lines of "
                   f"{part.log_path}:\n{part.log_tail()}")
    elif status == "orchestrator" and run.orchestrator_problem:
        message = run.orchestrator_problem + "; every part was stopped"
        run.client = None  # a dead or frozen database would only make the report wait
    elif status == "interrupted":
        message = "interrupted; every part was stopped"
    elif status == "inference":
        message = ("the solver ended early: inference failed maxInferenceFailures times in a "
                   "row (see inference.failures in report.json and the worker logs)")
    elif status == "data_dropped":
        drops = run.drops
        message = (f"{drops.dropped} of the {drops.streamed} snapshots streamed while the "
                   f"trainer trained were dropped ({drops.fraction():.0%}, more than "
                   f"maxDropFraction = {drops.max_fraction:g}): the model was trained on "
                   "what the trainer kept up with (see the warnings)")
    return status, message
