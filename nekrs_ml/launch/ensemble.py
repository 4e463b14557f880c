"""An ensemble run (`nekrs-ml run` of a .par with an [ENSEMBLE] section, docs/ensembles.md): one
database, every member's solver as its own MPI job under its own namespace <ns>.<member>, one
trainer per model reading every training member's stream as a consumer group, and the model
workers in the run's namespace serving every member. On several hosts the members' ranks spread
over the hosts (co-located: all; cluster: those that hold no database); trainers and workers go
where a single run's would."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .. import environment, keys, rundir
from ..errors import NekrsMLError
from ..waiting import wait_until
from .ensemble_case import EnsembleCase, Member, load_ensemble
from .ensemble_report import TRAINER_PART, EnsembleReporting
from .flow import FlowStatistics
from .nekrs_case import nekrs_run_length
from .placement import spread
from .progress import short
from .run import Run
from .serving import start_worker, wait_until_serving
from .settings import LaunchSettings, ReproducerSettings
from .startup import solver_program
from .supervisor import Part

SOLVER_PART = "solver."  # parts["solver.<member>"]
TRAINER_START_TIMEOUT = 300.0  # s for every trainer to be alive before the members start


def member_namespace(ns: str, member: str) -> str:
    """The namespace of one member's solver keys (docs/ensembles.md)."""
    return f"{ns}.{member}"


class MemberState:
    """One member as the run sees it: its .par, settings, namespace and outcome."""

    def __init__(self, member: Member, ns: str, directory: Path, case, settings: LaunchSettings):
        self.member = member
        self.name = member.name
        self.ns = ns
        self.dir = directory
        self.case = case              # its .par, read back (nekrs_ml.config.Config)
        self.settings = settings
        self.par = directory / "case.par"
        self.part: Optional[Part] = None
        self.status = "waiting"       # waiting, running, finished, failed, stopped
        self.total_steps: Optional[int] = None
        self.step = 0
        self.snapshots = 0
        self.inference: Optional[Dict] = None
        self.flow_stats = FlowStatistics()
        self.hosts: Optional[Dict[str, int]] = None  # several hosts: {host: solver ranks}


class EnsembleRun(EnsembleReporting, Run):
    """A Run whose solver is several members and whose trainer is one per model."""

    def __init__(self, par: Path, solver: str, run_dir: Path, trainer_grace: float,
                 supervisor=None):
        super().__init__(par, solver, run_dir, trainer_grace, supervisor)
        self.ensemble: EnsembleCase = load_ensemble(par)
        self.members: Dict[str, MemberState] = {}
        self.stop_mirrored = False
        self.started_members_at = 0.0  # when the first members started (startDelay counts from it)
        self.stopped_trainers: set = set()  # trainers stopped here after the grace
        self.trainer_statuses: Dict[str, Dict] = {}  # the last status read of each model's trainer

    # --- start ------------------------------------------------------------------------------
    def member_hosts(self, index: int, ranks: int) -> Optional[Dict[str, int]]:
        """Several hosts: member number `index`'s solver ranks per host, as evenly as they go;
        one host: None (the launcher places them). Co-located: over every host from the first
        on, so that each member's rank 0 (its progress, stop request and summary) writes to
        the server the launcher reads. Cluster: over the hosts that hold no database, each
        member starting one host further on (members of one rank each land on different
        hosts)."""
        if self.placement is None:
            return None
        if self.placement.mode == "colocated":
            return spread(ranks, self.placement.hosts)
        compute = [host for host in self.placement.hosts if host not in self.placement.servers]
        shift = index % len(compute)
        return spread(ranks, compute[shift:] + compute[:shift])

    def member_namespaces(self) -> Dict[str, str]:
        return {member.name: member_namespace(self.ns, member.name)
                for member in self.ensemble.members}

    def start_parts(self) -> None:
        base = self.settings
        members_dir, models_dir = self.run_dir / "members", self.run_dir / "models"
        for directory in (members_dir, models_dir):
            rundir.private_dir(directory)
        for index, member in enumerate(self.ensemble.members):
            directory = members_dir / member.name
            rundir.private_dir(directory)
            for stale in ("solver.log", "solver.json", "profile.png"):
                (directory / stale).unlink(missing_ok=True)
            case = self.ensemble.member_par(member, directory / "case.par")
            state = MemberState(member, member_namespace(self.ns, member.name), directory, case,
                                LaunchSettings.from_case(case))
            state.hosts = self.member_hosts(index, state.settings.solver_ranks)
            if self.solver == "reproducer":
                state.total_steps = ReproducerSettings.from_par(case).steps
            self.members[member.name] = state
        # every model is a consumer of every training member's stream before a snapshot exists:
        # what one model has not read yet stays (up to maxSnapshots) for it
        model_names = [model.name for model in self.ensemble.models]
        for state in self.training_states():
            self.client.command(["SADD", keys.stream_consumers(state.ns), *model_names],
                                key=keys.stream_consumers(state.ns))
        for model in self.ensemble.models:
            directory = models_dir / model.name
            rundir.private_dir(directory)
            for stale in ("trainer.log", "trainer.json", "trainer_history.jsonl"):
                (directory / stale).unlink(missing_ok=True)
            model_par = directory / "case.par"
            self.ensemble.model_par(model, model_par)
            streams = []
            for state in self.training_states():
                streams += ["--stream", f"{state.name}={state.ns}"]
            argv, env = self.mpi.command(
                [sys.executable, "-m", "nekrs_ml.cli", "train", str(model_par), "--run-dir",
                 str(directory), "--consumer", model.name, *streams], base.trainer_ranks,
                self.placement.trainer if self.placement else None, self.env,
                hostfile=directory / "trainer.hosts")
            self.parts[TRAINER_PART + model.name] = Part(
                TRAINER_PART + model.name, argv, env, str(directory),
                str(directory / "trainer.log"), self.supervisor)
        self.wait_for_trainers(model_names)
        if base.model_workers and self.placement is None:  # several hosts: the node agents
            workers = {}
            for index in range(base.model_workers):
                workers[index] = self.parts[f"worker{index}"] = start_worker(
                    self.par, index, self.env, self.run_dir, self.run_dir / f"worker{index}.log",
                    self.supervisor)
            wait_until_serving(self.client, self.ns, workers)
        self.started_members_at = time.monotonic()
        self.start_due_members()

    def wait_for_trainers(self, model_names: List[str]) -> None:
        """Every model's trainer is alive (its heartbeat) before a member streams: what a model
        misses is then what it could not keep up with, not its start-up (importing torch)."""
        def trainers_running() -> None:
            for name in model_names:
                part = self.parts[TRAINER_PART + name]
                if not part.running:
                    raise NekrsMLError(f"the trainer of {name} exited with code {part.returncode} "
                                       f"before it started; last lines of {part.log_path}:\n"
                                       f"{part.log_tail()}")

        wait_until(lambda: all(self.client.exists(keys.trainer_alive(self.ns, trainer=name))
                               for name in model_names),
                   TRAINER_START_TIMEOUT, "every model's trainer", interval=0.2,
                   check=trainers_running, see=f"see the trainer logs in {self.run_dir / 'models'}")

    def training_states(self) -> List[MemberState]:
        return [state for state in self.members.values() if not state.member.held_out]

    def start_due_members(self) -> None:
        """Starts every waiting member whose startDelay has passed."""
        elapsed = time.monotonic() - self.started_members_at
        for state in self.members.values():
            if state.status == "waiting" and elapsed >= state.member.start_delay_s:
                self.start_member(state)

    def start_member(self, state: MemberState) -> None:
        env = {**self.env, environment.NAMESPACE: state.ns, environment.MODEL_NAMESPACE: self.ns}
        cwd = state.dir
        par = state.par
        if self.solver == "nekrs":
            par = self.nekrs_member_case(state)
            from ..environment import udf_build_env

            env = {**udf_build_env(), **env}
            state.total_steps, _ = nekrs_run_length(par)
        argv, env = self.mpi.command(solver_program(self.solver, par, state.dir),
                                     state.settings.solver_ranks, state.hosts, env,
                                     hostfile=state.dir / "solver.hosts")
        state.part = Part(SOLVER_PART + state.name, argv, env, str(cwd),
                          str(state.dir / "solver.log"), self.supervisor)
        self.parts[state.part.name] = state.part
        state.status = "running"

    def nekrs_member_case(self, state: MemberState) -> Path:
        """NekRS finds a case's files by its name beside the .par: the member's directory gets
        links to the case directory's files and the member's .par under the case's name."""
        case_par = state.member.par or self.par
        case_dir = case_par.parent
        for source in case_dir.iterdir():
            if source.is_file() and source.suffix != ".par":
                link = state.dir / source.name
                if os.path.lexists(link):  # an earlier run's link, or one planted there
                    link.unlink()
                os.symlink(source, link)
        target = state.dir / case_par.name
        rundir.write_file(target, state.par.read_text())
        return target

    # --- supervision ------------------------------------------------------------------------
    def supervise(self) -> str:
        trainers = {name[len(TRAINER_PART):]: part for name, part in self.parts.items()
                    if name.startswith(TRAINER_PART)}
        workers = [part for name, part in self.parts.items() if name.startswith("worker")]
        reported = set()
        finished_at = None
        last_print = 0.0
        try:
            while True:
                self.start_due_members()
                statuses = self.poll_members(trainers)
                last_print = self.show_progress(statuses, last_print)
                self.check_restarted_workers()
                if self.orchestrator_failed():
                    return "orchestrator"
                self.mirror_stop(statuses)
                for name, part in trainers.items():
                    if not part.running and name not in reported and self.any_member_running():
                        reported.add(name)
                        if part.returncode != 0:
                            error = (statuses.get(name) or {}).get("error")
                            self.warn(f"trainer of {name} exited with code {part.returncode} "
                                      f"while members run; they continue (see {part.log_path})"
                                      + (f": {error}" if error else ""))
                for worker in list(workers):
                    if not worker.running and self.any_member_running():
                        workers.remove(worker)
                        restarted = self.restart_worker(worker)
                        if restarted is not None:
                            workers.append(restarted)
                outcome = self.check_members()
                if outcome:
                    return outcome
                if all(state.status in ("finished", "failed") for state in self.members.values()):
                    finished_at = finished_at or time.monotonic()
                    running = [part for part in trainers.values() if part.running]
                    if not running:
                        break
                    if time.monotonic() - finished_at > self.trainer_grace:
                        self.warn(f"trainers still running {self.trainer_grace:g} s after the "
                                  f"members finished; stopping them")
                        for part in running:
                            part.stop()
                            self.stopped_trainers.add(part.name)
                        break
                time.sleep(0.5)
        finally:
            statuses = self.poll_members(trainers)
            self.show_progress(statuses, 0.0, final=True)
        failed_trainers = [name for name, part in trainers.items()
                           if part.returncode not in (0, None)
                           and TRAINER_PART + name not in self.stopped_trainers]
        if failed_trainers:
            self.failure_message = (
                f"the trainer of {', '.join(failed_trainers)} failed; last lines of "
                + "; ".join(f"{trainers[n].log_path}:\n{trainers[n].log_tail()}"
                            for n in failed_trainers))
            return "trainer"
        failed = [state.name for state in self.members.values() if state.status == "failed"]
        if failed:
            self.failure_message = (
                f"member(s) {', '.join(failed)} failed (memberFailure = continue: the others "
                "finished and their data were trained on); see members.<name> in report.json")
            return "member"
        ended_early = [state.name for state in self.members.values()
                       if ((self.member_summary(state) or {}).get("ended_early")
                           == "inference_failures")]
        if ended_early:
            self.failure_message = (f"member(s) {', '.join(ended_early)} ended early: inference "
                                    "failed maxInferenceFailures times in a row")
            return "inference"
        return "ok"

    def any_member_running(self) -> bool:
        return any(state.status in ("waiting", "running") for state in self.members.values())

    def check_members(self) -> str:
        """Marks members that ended; with memberFailure = abort a failed one ends the run."""
        for state in self.members.values():
            if state.status != "running" or state.part.running:
                continue
            if state.part.returncode == 0:
                state.status = "finished"
                continue
            if self.orchestrator_failed():
                return "orchestrator"
            state.status = "failed"
            text = (f"member {state.name} failed with exit code {state.part.returncode}; last "
                    f"lines of {state.part.log_path}:\n{state.part.log_tail()}")
            if self.ensemble.member_failure == "abort":
                self.failure_message = text + "\n(memberFailure = abort: the run was stopped)"
                return "solver"
            self.warn(text + "\n(memberFailure = continue: the other members go on)")
        return ""

    def poll_members(self, trainers: Dict[str, Part]) -> Dict[str, Dict]:
        """Reads every member's progress and every trainer's status; {} entries when the
        database does not answer (counted in failed_polls)."""
        statuses: Dict[str, Dict] = {}
        announced = {state.name: [keys.snapshot_announced(state.ns, rank)
                                  for rank in range(state.settings.solver_ranks)]
                     for state in self.members.values()}
        progress = [key for state in self.members.values()
                    for key in (keys.solver_step(state.ns),)
                    + ((keys.solver_inference(state.ns),) if self.settings.inferring else ())
                    + tuple(announced[state.name])]
        status_keys = {name: keys.trainer_status(self.ns, trainer=name) for name in trainers}
        asked = progress + list(status_keys.values())
        try:  # one round trip per server for all of them
            values = dict(zip(asked, self.client.pipeline([("GET", key) for key in asked])))
            for state in self.members.values():
                state.step = int(values[keys.solver_step(state.ns)] or 0)
                state.snapshots = sum(int(values[key] or 0) for key in announced[state.name])
                raw = values.get(keys.solver_inference(state.ns))
                state.inference = json.loads(raw) if raw else state.inference
                state.flow_stats.drain(self.client, state.ns)
            for name, key in status_keys.items():
                statuses[name] = json.loads(values[key]) if values[key] else {}
        except NekrsMLError:
            self.failed_polls += 1
            return statuses
        except ValueError:
            return statuses
        self.failed_polls = 0
        self.trainer_statuses = statuses
        return statuses

    def mirror_stop(self, statuses: Dict[str, Dict]) -> None:
        """stopSolver: the trainer of the model the members infer with (or, in a train run, the
        first model) asked to stop: every member's solver is asked."""
        if self.stop_mirrored:
            return
        model = self.settings.model_name.lower()
        names = [m.name for m in self.ensemble.models]
        watched = model if model in names else names[0]
        try:
            if not self.client.exists(keys.trainer_stop(self.ns, trainer=watched)):
                return
            for state in self.members.values():
                self.client.set_string(keys.trainer_stop(state.ns), b"1")
        except NekrsMLError:
            return
        self.stop_mirrored = True
        print(f"\nnekrs-ml run: the trainer of {watched} asked the solvers to stop "
              "(stopSolver): asked every member", flush=True)

    def show_progress(self, statuses: Dict[str, Dict], last_print: float,
                      final: bool = False) -> float:
        now = time.monotonic()
        if not final and now - last_print < 5.0:
            return last_print
        parts = []
        for state in self.members.values():
            where = f"{state.step}/{state.total_steps or '?'}"
            flag = {"waiting": " waiting", "failed": " FAILED", "finished": " done"}.get(
                state.status, "")
            parts.append(f"{state.name} {where}{flag}")
        snapshots = sum(state.snapshots for state in self.members.values())
        line = "members: " + ", ".join(parts) + f" | snapshots {snapshots}"
        for model in self.ensemble.models:
            status = statuses.get(model.name) or {}
            loss = status.get("val_loss")
            line += (f" | {model.name} epoch {status.get('epoch', '-')} v"
                     f"{status.get('model_version') or '-'} "
                     f"{'-' if loss is None else f'{loss:.2e}'} {status.get('state', 'waiting')}")
        if self.settings.inferring:
            calls = sum((s.inference or {}).get("calls") or 0 for s in self.members.values())
            predicted = sum((s.inference or {}).get("predicted") or 0
                            for s in self.members.values())
            share = predicted / calls if calls else 0.0
            line += f" | predicted {share:.0%} of {calls} calls"
        print(short(line, 400), flush=True)
        return now

    def stop_parts(self) -> Dict[str, Optional[int]]:
        for part in self.parts.values():  # together: members, trainers and workers
            part.terminate()
        return super().stop_parts()
