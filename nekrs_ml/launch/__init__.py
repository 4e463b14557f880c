"""`nekrs-ml run CASE.par --solver reproducer|nekrs`: the whole workflow in one command.

Starts the orchestrator in the configured deployment, then the trainer and the solver, each
under its own mpiexec; shows live progress; stops everything when the solver is done, on
Ctrl-C, or when a part dies; writes report.json and plots into the run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import environment, keys, rundir
from ..client import Client
from ..config import load_par
from ..errors import ConfigError, DiskFullError, NekrsMLError
from ..orchestrator import Orchestrator
from ..rundir import RunLock
from . import supervisor
from .drops import DropWatch
from .flow import FlowStatistics, plot_profile
from .nodes import allocation_hosts
from .node_agent import cluster_ready_file, plan_file, ready_file, summary_file
from .mpi import MpiLauncher
from .placement import Placement
from .settings import LaunchSettings, ReproducerSettings
from .supervisor import Part
from .watchdog import Guard

EXIT_OK, EXIT_SOLVER, EXIT_TRAINER, EXIT_ORCHESTRATOR, EXIT_INFERENCE, EXIT_NO_MODEL = (
    0, 1, 3, 4, 5, 6)
EXIT_DISK_FULL = 7
EXIT_DATA_DROPPED = 8
EXIT_INTERRUPTED = 130
REPORT_RESERVE = ".report-reserve"  # space held for report.json, freed just before it is written
REPORT_RESERVE_BYTES = 1 << 20
DISK_LOW_BYTES = 64 << 10  # a part that failed with less than this free failed on a full disk
NODE_START_TIMEOUT = 120.0  # s for every host's node agent to have its server up
MAX_FAILED_POLLS = 3  # database polls failing in a row that make the orchestrator the failed part
RUN_LOCK = "run.lock"  # held by the live run of a run directory
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Outputs of an earlier run in the same directory, removed before a new run starts.
STALE_OUTPUTS = ("report.json", "solver.json", "trainer_history.jsonl", "trainer.json", "loss.png",
                 "tau_w.png", "solver.log", "trainer.log", "watchdog.log")


def stale_outputs(run_dir: Path) -> List[Path]:
    """What an earlier run left in run_dir: its outputs, worker logs and the model files its
    trainer.json names (so a failed rerun never leaves an old model looking current)."""
    paths = [run_dir / name for name in STALE_OUTPUTS] + sorted(run_dir.glob("worker*.log"))
    previous = _read_json(run_dir / "trainer.json") or {}
    for key in ("model_file", "model_export_file"):
        if previous.get(key):
            model = Path(previous[key])
            if model.parent == run_dir:
                paths += [model, model.with_suffix(".json")]
    return paths


def nekrs_run_length(par: Path) -> Tuple[Optional[int], Optional[float]]:
    """(last step, end time) of a NekRS case from its [GENERAL] section: numSteps, or endTime
    (with a fixed dt also the step). A variable dt (targetCFL=...) leaves only the end time."""
    import math

    from .nekrs_case import read_general

    values = {key: value.lower() for key, value in read_general(par).items()}

    def number(key):
        try:
            return float(values[key])
        except (KeyError, ValueError):
            return None

    steps, end_time, dt = number("numsteps"), number("endtime"), number("dt")
    if values.get("stopat", "numsteps" if steps else "endtime") == "numsteps" and steps:
        return int(steps), None
    if end_time is not None and dt:
        return math.ceil(end_time / dt - 1e-9), end_time
    return None, end_time


def solver_program(solver: str, par: Path, run_dir: Path) -> List[str]:
    """What each solver rank runs: the stand-in, or NekRS from NEKRS_HOME (or the PATH)."""
    if solver == "reproducer":
        return [sys.executable, "-m", "nekrs_ml.cli", "reproduce", str(par), "--summary",
                str(run_dir / "solver.json")]
    nekrs_home = os.environ.get("NEKRS_HOME")
    binary = Path(nekrs_home, "bin", "nekrs") if nekrs_home else shutil.which("nekrs")
    if not binary or not Path(binary).exists():
        raise ConfigError("--solver nekrs: nekrs not found; set NEKRS_HOME to the NekRS installation "
                          "(the one with bin/nekrs)")
    return [str(binary), "--setup", par.stem]


class Progress:
    """One status line, redrawn in place on a terminal; otherwise printed at most every
    PRINT_EVERY seconds when it changed, and every QUIET_EVERY seconds when it did not (a log
    file gets lines that say something, not carriage returns or a page of repeats while the
    solver builds)."""

    PRINT_EVERY = 5.0
    QUIET_EVERY = 60.0

    def __init__(self, total_steps: Optional[int], end_time: Optional[float] = None):
        self.total = total_steps
        self.end_time = end_time
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0
        self.last_text = ""

    def show(self, step: int, sim_time: Optional[float], snapshots: int, status: Dict,
             inference: Optional[Dict] = None) -> None:
        width = 30
        if self.total:
            frac = min(1.0, step / self.total)
        elif self.end_time and sim_time is not None:
            frac = min(1.0, sim_time / self.end_time)
        else:
            frac = 0.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        loss = status.get("val_loss") if status.get("val_loss") is not None else status.get("train_loss")
        where = f"step {step}/{self.total or '?'}"
        if self.end_time and sim_time is not None:
            where += f"  t {sim_time:.4g}/{self.end_time:g}"
        text = f"[{bar}] {where}"
        if status or not inference:  # a training run
            text += (f"  snapshots {snapshots}  epoch {status.get('epoch', '-')}  "
                     f"loss {loss if loss is None else f'{loss:.3e}'}  "
                     f"trained v{status.get('model_version') or '-'}  "
                     f"{status.get('state', 'waiting')}")
        if inference:
            calls = inference.get("calls") or 0
            share = (inference.get("predicted") or 0) / calls if calls else 0.0
            text += (f"  solver uses v{inference.get('version') or '-'}  "
                     f"predicted {share:.0%} of {calls} calls")
            if inference.get("waiting_for"):
                text += f"  waiting: {_short(inference['waiting_for'])}"
        if self.tty:
            print("\r" + text.ljust(120), end="", flush=True)
            return
        since = time.monotonic() - self.last_print
        if since > (self.PRINT_EVERY if text != self.last_text else self.QUIET_EVERY):
            print(text, flush=True)
            self.last_print, self.last_text = time.monotonic(), text

    def done(self) -> None:
        if self.tty:
            print()


class Run:
    def __init__(self, par: Path, solver: str, run_dir: Path, trainer_grace: float):
        self.par = par
        self.solver = solver
        self.run_dir = run_dir
        self.trainer_grace = trainer_grace
        self.cfg = load_par(str(par))
        self.settings = LaunchSettings.from_case(self.cfg)
        self.ns = self.settings.namespace
        self.client: Optional[Client] = None  # set once the orchestrator answers
        self.hosts: List[str] = []
        self.parts: Dict[str, Part] = {}
        self.warnings: List[str] = []
        self.started = time.time()
        self.failed_polls = 0           # database polls that failed in a row
        self.orchestrator_problem = ""  # why the database counts as failed
        self.flow_stats = FlowStatistics()  # the solver's flow-statistics records
        self.placement: Optional[Placement] = None  # several hosts: where each part runs
        self.nodes: Optional[Part] = None  # several hosts: the node agents (one per host)
        self.mpi: Optional[MpiLauncher] = None  # the site's MPI launcher, found at the start
        self.drops: Optional[DropWatch] = None  # training: snapshots dropped while it trains
        self.worker_restarts: Dict[str, Dict] = {}  # model workers restarted during the run

    # --- set-up -----------------------------------------------------------------------------
    def start_orchestrator(self) -> Dict:
        self.mpi = MpiLauncher.from_environment()  # a missing or refusing mpiexec: said first
        self.hosts = allocation_hosts()
        if len(self.hosts) > 1:
            return self.start_node_agents()
        self.orchestrator = Orchestrator(
            self.run_dir / "db", mode=self.settings.deployment, transport=self.settings.transport,
            shards=self.settings.shards, maxmemory=self.settings.max_memory, namespace=self.ns,
            smartredis=self.settings.smartredis, smartredis_tcp=self.settings.smartredis_tcp)
        self.info = self.orchestrator.start()
        self.env = dict(os.environ, **self.info["env"], NEKRS_ML_TIMEOUT=str(self.settings.timeout_s))
        self.client = Client(**environment.connection_options(self.env))
        return self.info

    def start_node_agents(self) -> Dict:
        """Several hosts (deployment = colocated or cluster): the placement of every part, and
        one node agent per host doing its host's part of it (servers, model workers); the run
        goes on once every host is ready."""
        settings, hosts = self.settings, self.hosts
        shown = ", ".join(hosts[:4]) + ("..." if len(hosts) > 4 else "")
        if settings.deployment == "single":
            raise ConfigError(
                f"the allocation spans {len(hosts)} hosts ({shown}); on several hosts `nekrs-ml "
                "run` places deployment = colocated (one server per host) or cluster (a Redis "
                "Cluster on the first dbNodes hosts), and this case has deployment = single: "
                "choose one of those, run on one host, or start the servers by hand (`nekrs-ml "
                "db start --bind ADDRESS`, docs/deployment.md)")
        if settings.smartredis or (settings.inferring and settings.inference_backend != "worker"):
            raise ConfigError(
                f"the allocation spans {len(hosts)} hosts ({shown}); on several hosts `nekrs-ml "
                "run` places model workers (inferenceBackend = worker) and no SmartRedis "
                "compatibility (smartredisCompat): run on one host, or start the parts by hand "
                "(docs/deployment.md)")
        if (settings.deployment == "colocated" and settings.workflow == "train+infer"
                and settings.trainer_nodes and settings.trainer_nodes < len(hosts)):
            raise ConfigError(
                f"workflow = train+infer with trainerNodes = {settings.trainer_nodes} on "
                f"{len(hosts)} hosts: the trainer publishes its models on the servers of its own "
                "hosts, so the solver ranks of the others would never get one; use trainerNodes "
                "= 0 (all hosts)")
        if (settings.deployment == "colocated" and settings.workflow == "infer"
                and self.cfg.get("nekrs_ml", "deployModel").lower() == "none"):
            raise ConfigError(
                f"{self.par.name}: workflow = infer on several hosts needs deployModel = <model "
                "file> in [NEKRS_ML]: each host's node agent deploys it on its host's server")
        if settings.deployment == "colocated":
            self.placement = Placement.colocated(
                hosts, settings.solver_ranks, settings.trainer_ranks, settings.trainer_nodes,
                settings.training, settings.model_workers)
        else:
            self.placement = Placement.clustered(
                hosts, settings.db_nodes, settings.shards, settings.solver_ranks,
                settings.trainer_ranks, settings.trainer_nodes, settings.training,
                settings.model_workers)
        from ..orchestrator import node_name

        if node_name() not in hosts:
            raise ConfigError(
                f"this host ({node_name()}) is not one of the allocation's ({shown}): run "
                "`nekrs-ml run` on a node of the allocation (the batch script does)")
        for host in self.placement.untrained_hosts():
            self.warn(f"no trainer rank on {host} (trainerNodes = {settings.trainer_nodes}): "
                      "its solver ranks stream snapshots nobody trains on")
        db_dir = self.run_dir / "db"
        rundir.private_dir(db_dir)
        plan = self.placement.plan(self.ns, settings.max_memory, settings.db_interface, self.par,
                                   deploy=settings.inferring)
        rundir.write_private(plan_file(db_dir), json.dumps(plan, indent=1))
        cluster_ready_file(db_dir).unlink(missing_ok=True)
        argv, env = self.mpi.command(
            [sys.executable, "-m", "nekrs_ml.cli", "node", "--dir", str(db_dir)], len(hosts),
            {host: 1 for host in hosts}, hostfile=self.run_dir / "nodes.hosts",
            cpu_bind=self.cpu_bind("nodes"))
        self.nodes = Part("nodes", argv, env, str(self.run_dir), str(self.run_dir / "nodes.log"))
        if self.placement.mode == "cluster":  # every database host's masters, then one cluster
            masters = len(self.placement.servers) * self.placement.shards
            self.wait_for_nodes(lambda: sum(len(state.servers) for state in
                                            Orchestrator.states(db_dir)) == masters,
                                "the database hosts' servers")
            Orchestrator.form_cluster_of(db_dir)
            cluster_ready_file(db_dir).write_text("")
        self.wait_for_nodes(lambda: all(ready_file(db_dir, host).exists() for host in hosts),
                            "every host")
        self.orchestrator = Orchestrator(db_dir, mode=self.placement.mode, namespace=self.ns)
        self.info = Orchestrator.info(db_dir)
        self.env = dict(os.environ, **self.info["env"], NEKRS_ML_TIMEOUT=str(settings.timeout_s))
        # co-located: this host's server; cluster: the cluster, over the network
        self.client = Client(**environment.connection_options(self.env))
        return self.info

    def cpu_bind(self, part: str) -> Optional[str]:
        """srun's per-step binding: co-located, a host's server apart from its solver ranks."""
        if self.placement is None or self.placement.mode != "colocated":
            return None
        return self.mpi.cpu_bind(part, self.placement.solver)

    def wait_for_nodes(self, ready, what: str) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while not ready():
            if not self.nodes.running:
                raise NekrsMLError(f"the node agents exited with code {self.nodes.returncode} "
                                   f"before {what} was ready; last lines of "
                                   f"{self.nodes.log_path}:\n{self.nodes.log_tail()}")
            if time.monotonic() > deadline:
                raise NekrsMLError(f"{what} was not ready within {NODE_START_TIMEOUT:g} s (see "
                                   f"{self.nodes.log_path})")
            time.sleep(0.2)

    def stop_node_agents(self) -> Optional[int]:
        return self.nodes.stop() if self.nodes is not None else None

    def add_node_counters(self, data: Dict) -> Dict:
        """report.json's `nodes`: per host, what its agent read from its server as it stopped
        (solver ranks, snapshots, last step, keys, peak memory; null for a host whose agent
        could not say)."""
        nodes = {host: _read_json(summary_file(self.run_dir / "db", host))
                 for host in self.placement.hosts}
        data = {**data, "nodes": nodes}
        self.write_report_file(data)
        return data

    def start_parts(self) -> None:
        workflow = self.settings.workflow
        cwd = str(self.par.parent) if self.solver == "nekrs" else str(self.run_dir)
        if workflow in ("train", "train+infer"):
            counts = self.placement.trainer if self.placement else None
            argv, env = self.mpi.command(
                [sys.executable, "-m", "nekrs_ml.cli", "train", str(self.par), "--run-dir",
                 str(self.run_dir)], self.settings.trainer_ranks, counts, self.env,
                hostfile=self.run_dir / "trainer.hosts")
            self.parts["trainer"] = Part("trainer", argv, env, str(self.run_dir),
                                         str(self.run_dir / "trainer.log"))
        if workflow in ("infer", "train+infer") and (self.placement is None
                                                     or self.placement.mode == "cluster"):
            self.deploy_model()  # co-located on several hosts: each node agent on its server
            if self.settings.inference_backend == "inprocess":
                self.compile_package()
        if self.settings.model_workers and self.placement is None:
            for index in range(self.settings.model_workers):
                argv = [sys.executable, "-m", "nekrs_ml.cli", "serve", str(self.par),
                        "--worker", str(index)]
                self.parts[f"worker{index}"] = Part(f"worker{index}", argv, self.env,
                                                    str(self.run_dir),
                                                    str(self.run_dir / f"worker{index}.log"))
            self.wait_for_workers()
        solver_env = self.env
        if self.solver == "nekrs":  # the case's udf.cmake finds nekrs_ml through these
            from ..environment import udf_build_env

            solver_env = {**udf_build_env(), **self.env}
        argv, solver_env = self.mpi.command(
            solver_program(self.solver, self.par, self.run_dir), self.settings.solver_ranks,
            self.placement.solver if self.placement else None, solver_env,
            hostfile=self.run_dir / "solver.hosts", cpu_bind=self.cpu_bind("solver"))
        self.parts["solver"] = Part("solver", argv, solver_env, cwd, str(self.run_dir / "solver.log"))

    def deploy_model(self) -> None:
        """deployModel (relative to the .par) becomes the current version before the solver
        starts; workflow = infer needs a model from somewhere."""
        from .. import registry
        from ..serve.deploy import deploy
        from ..serve.settings import DeploySettings

        settings = DeploySettings.from_par(self.par, namespace=self.ns, case=self.cfg)
        name, ns = settings.model_name, self.ns
        if settings.model_file is not None:
            version = deploy(self.client, ns, name, settings.model_file,
                             origin=f"deployModel:{settings.model_file_text}")
            print(f"nekrs-ml run: deployed {settings.model_file} as {name!r} v{version}", flush=True)
        elif self.settings.workflow == "infer" and registry.latest_version(self.client, ns, name) is None:
            raise ConfigError(
                f"{self.par.name}: workflow = infer needs a model, and {name!r} is not published: "
                "set deployModel = <model file> in [NEKRS_ML] (or use workflow = train+infer)")

    def compile_package(self) -> None:
        """inferenceBackend = inprocess: the package of the current version's graph exists
        before the solver starts (compiled once per graph; a train+infer run without a deployed
        model gets its packages from the trainer)."""
        from .. import aot, registry

        name, device = self.settings.model_name, self.settings.inprocess_device
        if registry.latest_version(self.client, self.ns, name) is None:
            return
        from ..backend_formats import refuse_inprocess

        refuse_inprocess(registry.load(self.client, self.ns, name)[1])  # ONNX, TF: workers only
        started = time.monotonic()
        graph, compiled = aot.ensure_package(self.client, self.ns, name, device=device)
        if compiled:
            print(f"nekrs-ml run: compiled the in-process package of {name!r} (graph {graph}, "
                  f"{aot.device_kind(device)}) in {time.monotonic() - started:.0f} s", flush=True)

    def wait_for_workers(self, timeout: float = 120.0) -> None:
        """The solver's first call must find its worker alive (its heartbeat key set)."""
        ns = self.ns
        deadline = time.monotonic() + timeout
        for index in range(self.settings.model_workers):
            part = self.parts[f"worker{index}"]
            while not self.client.exists(keys.worker_heartbeat(ns, index)):
                if not part.running:
                    raise NekrsMLError(f"model worker {index} exited with code {part.returncode} "
                                       f"before serving; last lines of {part.log_path}:\n"
                                       f"{part.log_tail()}")
                if time.monotonic() > deadline:
                    raise NekrsMLError(f"model worker {index} did not start within {timeout:g} s "
                                       f"(see {part.log_path})")
                time.sleep(0.1)

    # --- supervision ------------------------------------------------------------------------
    def supervise(self) -> str:
        """Returns "ok" or the name of the failing part."""
        if self.solver == "reproducer":
            total, end_time = ReproducerSettings.from_par(self.cfg).steps, None
        else:
            total, end_time = nekrs_run_length(self.par)
        progress = Progress(total, end_time)
        solver, trainer = self.parts["solver"], self.parts.get("trainer")
        workers = [part for name, part in self.parts.items() if name.startswith("worker")]
        trainer_reported = trainer_stopped_here = False
        solver_finished_at = None
        if trainer is not None:
            self.drops = DropWatch(self.client, self.ns, self.settings.solver_ranks,
                                   self.settings.max_drop_fraction, self.warn)
        trainer_state = None
        try:
            while True:
                step, sim_time, snapshots, status, inference = self.poll_progress()
                progress.show(step, sim_time, snapshots, status, inference)
                trainer_state = status.get("state", trainer_state)
                if self.drops is not None:
                    self.drops.poll(trainer.running, trainer_state)
                self.check_restarted_workers()
                if self.orchestrator_failed():
                    return "orchestrator"
                if trainer and not trainer.running and not trainer_reported and solver.running:
                    trainer_reported = True
                    if trainer.returncode != 0:
                        error = self.trainer_status().get("error")
                        self.warn(f"trainer exited with code {trainer.returncode} while the solver "
                                  f"runs; the solver continues (see {trainer.log_path})"
                                  + (f": {error}" if error else ""))
                for worker in list(workers):
                    if not worker.running and solver.running:
                        workers.remove(worker)
                        restarted = self.restart_worker(worker)
                        if restarted is not None:
                            workers.append(restarted)
                if not solver.running:
                    if solver.returncode != 0:
                        # ranks fail when the database dies under them: blame the cause
                        return "orchestrator" if self.orchestrator_failed() else "solver"
                    solver_finished_at = solver_finished_at or time.monotonic()
                    if trainer is None or not trainer.running:
                        break
                    if time.monotonic() - solver_finished_at > self.trainer_grace:
                        self.warn(f"trainer still running {self.trainer_grace:g} s after the solver "
                                  "finished; stopping it")
                        trainer.stop()
                        trainer_stopped_here = True
                        break
                time.sleep(0.5)
        finally:
            progress.show(*self.poll_progress())
            progress.done()
        if self.drops is not None:  # the last counts (the solver has finished)
            self.drops.poll(trainer.running, trainer_state, force=True)
        # mpiexec reports a rank stopped by our SIGTERM as a failure: that one is not
        if trainer is not None and trainer.returncode != 0 and not trainer_stopped_here:
            return "trainer"
        if (self.solver_summary() or {}).get("ended_early") == "inference_failures":
            return "inference"
        if self.drops is not None and self.drops.exceeded():
            return "data_dropped"
        return "ok"

    def restart_worker(self, worker: Part) -> Optional[Part]:
        """A model worker died while the solver runs: started again unless it already was
        maxWorkerRestarts times (the solver bridges on the fallback wall law meanwhile)."""
        record = self.worker_restarts.setdefault(
            worker.name, {"restarts": 0, "exit_codes": [], "serving_again_after_s": []})
        record["exit_codes"].append(worker.returncode)
        limit = self.settings.max_worker_restarts
        if record["restarts"] >= limit:
            self.warn(f"{worker.name} exited with code {worker.returncode} and is not restarted "
                      f"(maxWorkerRestarts = {limit} reached); the solver's next inference calls "
                      f"fail (see {worker.log_path})")
            return None
        record["restarts"] += 1
        index = int(worker.name[len("worker"):])
        try:  # its heartbeat outlives it by a few seconds: the new one's is what counts
            self.client.delete(keys.worker_heartbeat(self.ns, index))
        except NekrsMLError:
            pass
        restarted = worker.restarted()
        self.parts[worker.name] = restarted
        record["pending_since"] = time.monotonic()
        self.warn(f"{worker.name} exited with code {worker.returncode}; restarted it (restart "
                  f"{record['restarts']} of maxWorkerRestarts = {limit}); the solver uses the "
                  f"fallback wall law until it serves again (see {worker.log_path})")
        return restarted

    def check_restarted_workers(self) -> None:
        """Says when a restarted worker serves again (its heartbeat is back)."""
        for name, record in self.worker_restarts.items():
            since = record.get("pending_since")
            if since is None:
                continue
            try:
                serving = self.client.exists(keys.worker_heartbeat(self.ns, int(name[6:])))
            except NekrsMLError:
                continue
            if serving:
                took = time.monotonic() - since
                record["serving_again_after_s"].append(round(took, 2))
                del record["pending_since"]
                print(f"\nnekrs-ml run: {name} serves again, {took:.1f} s after its restart",
                      flush=True)

    def poll_progress(self):
        ns = self.ns
        try:
            step = int(self.client.get_string(keys.solver_step(ns)) or 0)
            raw_time = self.client.get_string(keys.solver_time(ns))
            sim_time = float(raw_time) if raw_time else None
            snapshots = int(self.client.get_string(keys.solver_snapshots(ns)) or 0)
            raw = self.client.get_string(keys.trainer_status(ns))
            status = json.loads(raw) if raw else {}
            raw = self.client.get_string(keys.solver_inference(ns)) if self.settings.inferring else None
            inference = json.loads(raw) if raw else None
            self.flow_stats.drain(self.client, ns)
        except NekrsMLError:
            self.failed_polls += 1
            return 0, None, 0, {}, None
        except ValueError:
            return 0, None, 0, {}, None
        self.failed_polls = 0
        return step, sim_time, snapshots, status, inference

    def orchestrator_failed(self) -> bool:
        """True (with the reason in orchestrator_problem) when a server of the run is gone or
        stopped, or the database did not answer MAX_FAILED_POLLS polls in a row."""
        try:
            dead = self.orchestrator.dead_servers()
        except NekrsMLError as exc:
            dead = [str(exc)]
        if self.nodes is not None and not self.nodes.running:
            self.orchestrator_problem = (
                f"the database failed: the node agents exited with code {self.nodes.returncode}; "
                f"last lines of {self.nodes.log_path}:\n{self.nodes.log_tail()}")
        elif dead:
            self.orchestrator_problem = (f"the database failed: redis-server {', '.join(dead)}; "
                                         f"see the server log in {self.run_dir / 'db'}")
        elif self.failed_polls >= MAX_FAILED_POLLS:
            self.orchestrator_problem = (f"the database did not answer {self.failed_polls} polls "
                                         f"in a row (timeout {self.settings.timeout_s:g} s each); see "
                                         f"the server log in {self.run_dir / 'db'}")
        return bool(self.orchestrator_problem)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"\nnekrs-ml run: warning: {text}", file=sys.stderr, flush=True)

    def stop_parts(self) -> Dict[str, Optional[int]]:
        return {name: part.stop() for name, part in self.parts.items()}

    # --- report -----------------------------------------------------------------------------
    def solver_summary(self) -> Optional[Dict]:
        """What the coupling's rank 0 stored when the solver finished (NekRS and the stand-in
        alike); the stand-in's own file when the database no longer answers."""
        if self.client is not None:
            try:
                text = self.client.get_string(keys.solver_summary(self.ns))
                if text:
                    return json.loads(text)
            except (NekrsMLError, ValueError):
                pass
        return _read_json(self.run_dir / "solver.json")

    def write_report(self, status: str, exit_codes: Dict[str, Optional[int]], message: str) -> Dict:
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
        trainer = _read_json(self.run_dir / "trainer.json")
        if history and "skipped" in history[-1]:  # bad snapshots the trainer left out
            trainer = dict(trainer or {}, skipped=history[-1]["skipped"])
        data = {
            "status": status,
            "message": message,
            "solver": self.solver,
            "case": str(self.par),
            "workflow": self.settings.workflow,
            "deployment": self.settings.deployment,
            "model_name": self.settings.model_name,
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
        self.write_report_file(data)
        return data

    def write_report_file(self, data: Dict) -> None:
        """report.json, whole or not at all; when even that finds no room, the report goes to
        stderr (and the error into the last line)."""
        from . import report

        text = json.dumps(report.strict_json(data), indent=2, allow_nan=False)
        release_reserve(self.run_dir)
        try:
            rundir.write_file(self.run_dir / "report.json", text + "\n")
        except OSError as exc:
            print(f"nekrs-ml run: report.json could not be written ({exc}); the report:\n{text}",
                  file=sys.stderr, flush=True)
            data["report_error"] = str(exc)

    def trainer_status(self) -> Dict:
        """The trainer's last status record (its error when it failed), {} when none."""
        if self.client is None:
            return {}
        try:
            raw = self.client.get_string(keys.trainer_status(self.ns))
            status = json.loads(raw) if raw else {}
        except (NekrsMLError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

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
        """u_tau, Re_tau, U_b and the profiles: from the flow-statistics records (statsInterval)
        where the solver streamed them, else from the run summary's wall statistics; the
        momentum balance from the summary either way."""
        from . import report

        if self.client is not None:
            try:
                self.flow_stats.drain(self.client, self.ns)
            except NekrsMLError as exc:
                self.warn(f"the last flow-statistics records could not be read: {exc}")
        from_summary = report.flow_statistics(solver_summary)
        statistics = self.flow_stats.result((solver_summary or {}).get("kinematic_viscosity"))
        if statistics is None:
            return from_summary
        return {**(from_summary or {}), **statistics}


def _short(text: str, limit: int = 90) -> str:
    """The start of a long reason, for the one-line progress display."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
        supervisor.guard_with(guard)
        try:
            return _execute_locked(par_path, solver, run_path, trainer_grace)
        finally:
            supervisor.guard_with(None)
            guard.close()
    finally:
        lock.release()
        for sig, handler in previous.items():  # only now: a late signal must not interrupt
            signal.signal(sig, handler)        # the stop, the report or the watchdog's end


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


def _execute_locked(par_path: Path, solver: str, run_path: Path, trainer_grace: float) -> int:
    for stale in stale_outputs(run_path):  # a reused run directory must not mix two runs' results
        stale.unlink(missing_ok=True)
    reserve_report_space(run_path)
    try:
        return _run(par_path, solver, run_path, trainer_grace)
    finally:
        release_reserve(run_path)


def _run(par_path: Path, solver: str, run_path: Path, trainer_grace: float) -> int:
    run = Run(par_path, solver, run_path, trainer_grace)
    status, message, exit_codes = "launcher", "", {}
    interrupted = False

    # --- signals: the first one (Ctrl-C, SIGTERM, a closed terminal) stops the run; any
    # later one only hurries the stop along, which still stops every part and writes the report
    def while_stopping(signum, frame):
        supervisor.hurry()
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
        disk = run.disk_problem() if status in ("solver", "trainer", "launcher") else ""
        if disk:
            status = "disk_full"
            message = f"{disk}; every part was stopped"
            if "--run-dir" not in disk:
                message += (". Free space there, or choose a run directory on another file "
                            "system (--run-dir)")
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
        try:
            data = run.write_report(status, exit_codes, message)
        finally:
            run.stop_node_agents()  # after the report: it reads this host's server
            Orchestrator.stop_dir(run_path / "db")
        if run.placement is not None:
            data = run.add_node_counters(data)
    summarise(data, run_path)
    if interrupted:
        return EXIT_INTERRUPTED
    return {"ok": EXIT_OK, "solver": EXIT_SOLVER, "trainer": EXIT_TRAINER,
            "orchestrator": EXIT_ORCHESTRATOR, "inference": EXIT_INFERENCE,
            "no_model": EXIT_NO_MODEL, "disk_full": EXIT_DISK_FULL,
            "data_dropped": EXIT_DATA_DROPPED}.get(data["status"], EXIT_SOLVER)


def summarise(data: Dict, run_dir: Path) -> None:
    from .report import model_use_text

    err = data.get("tau_w_rel_error")
    line = f"nekrs-ml run: {data['status']}"
    inference = data.get("inference")
    trained = (data.get("trainer") or {}).get("model_version") or (
        data.get("model_version") if err else None)
    if trained:
        line += f"; trained model v{trained}"
    if err:
        line += f" (a-priori tau_w relative error median {err['median']:.3%}, p95 {err['p95']:.3%})"
    if inference:
        line += f"; {model_use_text(inference)}"
    if inference and inference.get("calls"):
        line += f"; inference {inference['calls']:.0f} calls"
        if inference.get("latency_ms_p50") is not None:
            line += f", p50 {inference['latency_ms_p50']:.2f} ms"
        final = inference.get("tau_w_rel_error_final") or {}
        if final.get("median") is not None:
            line += f", v{inference['final_version']} error median {final['median']:.3%}"
        if inference.get("fallbacks"):
            line += f", {inference['fallbacks']:.0f} fallback steps"
    snapshots = data.get("snapshots") or {}
    if snapshots.get("dropped"):
        line += f"; {snapshots['dropped']:.0f} of {snapshots.get('written') or 0:.0f} snapshots dropped"
        drops = data.get("drops") or {}
        if drops.get("dropped_while_training"):
            line += (f" ({drops['fraction']:.0%} of those streamed while the trainer trained; "
                     f"maxDropFraction {drops['max_fraction']:g})")
        elif drops:  # by design: the trainer was starting, or had finished
            line += " (none while the trainer trained)"
    restarts = sum(r["restarts"] for r in (data.get("worker_restarts") or {}).values())
    if restarts:
        line += f"; {restarts} model worker restart(s)"
    flow = data.get("flow") or {}
    if flow.get("u_tau"):
        line += f"; u_tau {flow['u_tau']:.4g}"
        if flow.get("u_tau_uncertainty") and flow.get("statistically_meaningful", True):
            line += f" ± {flow['u_tau_uncertainty']:.2g}"
        elif flow.get("statistically_meaningful") is False:
            line += " (not statistically meaningful: see flow.caveat)"
        if flow.get("Re_tau"):
            line += f", Re_tau {flow['Re_tau']:.0f}"
        if flow.get("U_b") is not None:
            line += f", U_b {flow['U_b']:.4g}"
    balance = (data.get("wall_stress") or {}).get("momentum_balance") or {}
    if balance.get("tau_w_measured") is not None and balance.get("tau_w_implied"):
        line += (f"; wall shear stress {balance['tau_w_measured']:.3e} against "
                 f"{balance['tau_w_implied']:.3e} from the momentum balance")
    timing = data.get("timing") or {}
    if timing.get("coupling_fraction") is not None:
        line += (f"; coupling {timing['coupling_seconds_per_step'] * 1e3:.3g} ms per step "
                 f"({timing['coupling_fraction']:.1%} of the step time)")
    print(line + f"; report {run_dir / 'report.json'}", flush=True)
    if data["status"] != "ok" and data.get("message"):
        print(f"nekrs-ml run: {data['message']}", file=sys.stderr)
