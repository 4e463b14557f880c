"""The run's report: gathered once the parts are stopped (the model's a-priori test, the
solver's and trainer's summaries, the flow, the plots) and written to report.json, whole, by
write_report_file alone; the room held for it on the run directory's file system meanwhile."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from .. import keys, rundir
from ..errors import DiskFullError, NekrsMLError
from .flow import plot_profile
from .node_agent import summary_file

REPORT_RESERVE = ".report-reserve"  # space held for report.json, freed just before it is written
REPORT_RESERVE_BYTES = 1 << 20
DISK_LOW_BYTES = 64 << 10  # a part that failed with less than this free failed on a full disk


def read_json(path: Path):
    """The JSON in a file; None when there is none or it does not parse."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def reserve_report_space(run_dir: Path) -> None:
    """Holds REPORT_RESERVE_BYTES of the run directory's file system for report.json, so that
    a disk that fills up during the run still gets its report; refuses a run that starts on a
    full disk."""
    path = run_dir / REPORT_RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, REPORT_RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        path.unlink(missing_ok=True)
        error = rundir.disk_error(exc, path)
        if error is None:
            raise
        raise DiskFullError(f"{error}; the run needs at least {REPORT_RESERVE_BYTES >> 20} MiB "
                            "there besides its outputs") from None


def release_reserve(run_dir: Path) -> None:
    (run_dir / REPORT_RESERVE).unlink(missing_ok=True)


def write_report_file(run_dir: Path, data: Dict) -> None:
    """report.json, whole or not at all; when even that finds no room, the report goes to
    stderr (and the error into the last line)."""
    from . import report

    text = json.dumps(report.strict_json(data), indent=2, allow_nan=False)
    release_reserve(run_dir)
    try:
        rundir.write_file(run_dir / "report.json", text + "\n")
    except OSError as exc:
        print(f"nekrs-ml run: report.json could not be written ({exc}); the report:\n{text}",
              file=sys.stderr, flush=True)
        data["report_error"] = str(exc)


def stored_summary(client, ns: str, fallback: Path) -> Optional[Dict]:
    """What the coupling's rank 0 stored when the solver finished (NekRS and the stand-in
    alike); the stand-in's own file when the database no longer answers."""
    if client is not None:
        try:
            text = client.get_string(keys.solver_summary(ns))
            if text:
                return json.loads(text)
        except (NekrsMLError, ValueError):
            pass
    return read_json(fallback)


def solver_flow(client, ns: str, flow_stats, solver_summary: Optional[Dict], warn) -> Optional[Dict]:
    """u_tau, Re_tau, U_b and the profiles: from the flow-statistics records (statsInterval)
    where the solver streamed them (the last ones drained from ``ns`` into ``flow_stats``), else
    from the run summary's wall statistics; the momentum balance from the summary either way."""
    from . import report

    if client is not None:
        try:
            flow_stats.drain(client, ns)
        except NekrsMLError as exc:
            warn(f"the last flow-statistics records could not be read: {exc}")
    from_summary = report.flow_statistics(solver_summary)
    statistics = flow_stats.result((solver_summary or {}).get("kinematic_viscosity"))
    if statistics is None:
        return from_summary
    return {**(from_summary or {}), **statistics}


class Reporting:
    """The report of a Run (nekrs_ml.launch.run), gathered from what the run left."""

    def report_head(self, status: str, message: str) -> Dict:
        """The first fields of report.json: the outcome and what ran."""
        return {"status": status, "message": message, "solver": self.solver,
                "case": str(self.par), "workflow": self.settings.workflow,
                "deployment": self.settings.deployment, "model_name": self.settings.model_name}

    def solver_summary(self) -> Optional[Dict]:
        return stored_summary(self.client, self.ns, self.run_dir / "solver.json")

    def gather_report(self, status: str, exit_codes: Dict[str, Optional[int]], message: str) -> Dict:
        """What report.json says of the run (write_report_file writes it): the outcome, the
        model's a-priori test, the solver's and trainer's summaries, the flow, the plots drawn."""
        from . import report

        evaluation = None
        if self.client is not None and self.settings.training:
            try:
                evaluation = report.evaluate_model(self.client, self.ns,
                                                   self.settings.model_name, self.settings.solver_ranks)
            except Exception as exc:  # the report must be written even when evaluation fails
                self.warn(f"model evaluation failed: {exc}")
        history = report.read_history(self.run_dir / "trainer_history.jsonl")
        solver_summary = self.solver_summary()
        flow = self.flow(solver_summary)
        release_reserve(self.run_dir)  # report.json comes first: the plots may find no room
        try:
            plots = report.plot(self.run_dir, history, evaluation)
        except Exception as exc:  # the report must be written even when a plot fails
            plots = []
            self.warn(f"loss.png and tau_w.png were not drawn: {exc}")
        try:
            if flow and plot_profile(self.run_dir / "profile.png", flow, label=self.par.stem):
                plots.append("profile.png")
        except Exception as exc:  # the report must be written even when a plot fails
            self.warn(f"profile.png was not drawn: {exc}")
        status, why = report.model_outcome(status, self.settings.workflow,
                                           (solver_summary or {}).get("inference"))
        if why:
            message = why
            self.warn(why)
        tested = evaluation is not None and "median" in evaluation
        trainer = read_json(self.run_dir / "trainer.json")
        if history and "skipped" in history[-1]:  # bad snapshots the trainer left out
            trainer = dict(trainer or {}, skipped=history[-1]["skipped"])
        data = {
            **self.report_head(status, message),
            # the version evaluated (training), else the last one the solver used (inference)
            "model_version": (evaluation["version"] if evaluation else
                              ((solver_summary or {}).get("inference") or {}).get("final_version")),
            "tau_w_rel_error": ({"median": evaluation["median"], "p95": evaluation["p95"],
                                 "samples": evaluation["samples"], "data": "held-out snapshot"}
                                if tested else None),
            "snapshots": ({"written": solver_summary.get("snapshots_written"),
                           "dropped": solver_summary.get("snapshots_dropped"),
                           "window": solver_summary.get("sample_window")}
                          if solver_summary else None),
            "inference": (solver_summary or {}).get("inference"),
            # area-weighted wall stress and the momentum balance (NekRS; null for the stand-in)
            "wall_stress": (solver_summary or {}).get("wall_stress"),
            "flow": flow,
            # the coupling's share of the step time (per rank: inside Coupling::step vs between)
            "timing": (solver_summary or {}).get("timing"),
            "solver_summary": solver_summary,
            "trainer": trainer,
            "trained_model": (trainer or {}).get("model_file"),
            "trainer_last": history[-1] if history else None,
            "exit_codes": exit_codes,
            "placement": self.placement.as_dict() if self.placement else None,
            # snapshots dropped while the trainer trained (maxDropFraction)
            "drops": self.drops.as_dict() if self.drops is not None else None,
            # model workers restarted after they died (maxWorkerRestarts)
            "worker_restarts": ({name: {k: v for k, v in record.items() if k != "pending_since"}
                                 for name, record in self.worker_restarts.items()} or None),
            "warnings": self.warnings,
            "plots": plots,
            "wall_seconds": time.time() - self.started,
        }
        return data

    def node_counters(self) -> Dict[str, Optional[Dict]]:
        """report.json's `nodes`: per host, what its agent read from its server as it stopped
        (solver ranks, snapshots, last step, keys, peak memory; null for a host whose agent
        could not say)."""
        return {host: read_json(summary_file(self.run_dir / "db", host))
                for host in self.placement.hosts}

    def disk_problem(self) -> str:
        """Why a failed part failed on a full disk ("" when it did not): the trainer said so
        (its status key, which a full disk does not stop), or the run directory's file system
        has (almost) no room left."""
        status = self.trainer_status()
        if status.get("disk_full"):
            return f"the trainer failed: {status.get('error')}"
        free = rundir.free_bytes(self.run_dir)
        if free is not None and free < DISK_LOW_BYTES:
            return (f"the file system of the run directory {self.run_dir} (mounted at "
                    f"{rundir.mount_point(self.run_dir)}) is full: {free / 1024:.0f} KiB free")
        return ""

    def flow(self, solver_summary: Optional[Dict]) -> Optional[Dict]:
        return solver_flow(self.client, self.ns, self.flow_stats, solver_summary, self.warn)
