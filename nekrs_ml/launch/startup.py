"""The start of a run: the database (this host's orchestrator, or a node agent on every host of
the allocation), the model a case infers with, then the parts (trainer, model workers, solver),
each under the site's MPI launcher."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .. import environment, rundir
from ..client import Client
from ..errors import ConfigError, NekrsMLError
from ..orchestrator import Orchestrator, node_name
from ..waiting import wait_until
from .mpi import MpiLauncher
from .node_agent import cluster_ready_file, plan_file, ready_file
from .nodes import allocation_hosts
from .placement import Placement
from .serving import deploy_case_model, start_worker, wait_until_serving
from .supervisor import Part

NODE_START_TIMEOUT = 120.0  # s for every host's node agent to have its server up


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


class Startup:
    """The start-up of a Run (nekrs_ml.launch.run), which holds the state it sets."""

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
        self.connect()
        return self.info

    def connect(self) -> None:
        """The parts' environment and the launcher's client, from the database's info."""
        self.env = dict(os.environ, **self.info["env"],
                        NEKRS_ML_TIMEOUT=str(self.settings.timeout_s))
        self.client = Client(**environment.connection_options(self.env))

    def shown_hosts(self) -> str:
        return ", ".join(self.hosts[:4]) + ("..." if len(self.hosts) > 4 else "")

    def check_multi_host(self) -> None:
        """Refuses a case that several hosts cannot run as the launcher places it."""
        settings, hosts, shown = self.settings, self.hosts, self.shown_hosts()
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

    def start_node_agents(self) -> Dict:
        """Several hosts (deployment = colocated or cluster): the placement of every part, and
        one node agent per host doing its host's part of it (servers, model workers); the run
        goes on once every host is ready."""
        settings, hosts = self.settings, self.hosts
        self.check_multi_host()
        if settings.deployment == "colocated":
            self.placement = Placement.colocated(
                hosts, settings.solver_ranks, settings.trainer_ranks, settings.trainer_nodes,
                settings.training, settings.model_workers)
        else:
            self.placement = Placement.clustered(
                hosts, settings.db_nodes, settings.shards, settings.solver_ranks,
                settings.trainer_ranks, settings.trainer_nodes, settings.training,
                settings.model_workers)
        if node_name() not in hosts:
            raise ConfigError(
                f"this host ({node_name()}) is not one of the allocation's "
                f"({self.shown_hosts()}): run `nekrs-ml run` on a node of the allocation (the "
                "batch script does)")
        for host in self.placement.untrained_hosts():
            self.warn(f"no trainer rank on {host} (trainerNodes = {settings.trainer_nodes}): "
                      "its solver ranks stream snapshots nobody trains on")
        db_dir = self.run_dir / "db"
        rundir.private_dir(db_dir)
        plan = self.placement.plan(self.ns, settings.max_memory, settings.db_interface, self.par,
                                   deploy=settings.inferring)
        plan["members"] = self.member_namespaces()
        rundir.write_private(plan_file(db_dir), json.dumps(plan, indent=1))
        cluster_ready_file(db_dir).unlink(missing_ok=True)
        argv, env = self.mpi.command(
            [sys.executable, "-m", "nekrs_ml.cli", "node", "--dir", str(db_dir)], len(hosts),
            {host: 1 for host in hosts}, hostfile=self.run_dir / "nodes.hosts",
            cpu_bind=self.cpu_bind("nodes"))
        self.nodes = Part("nodes", argv, env, str(self.run_dir), str(self.run_dir / "nodes.log"),
                          self.supervisor)
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
        # co-located: this host's server; cluster: the cluster, over the network
        self.connect()
        return self.info

    def member_namespaces(self) -> Dict[str, str]:
        """An ensemble's members and their namespaces, which the node agents count one by
        one; none for a run of one solver."""
        return {}

    def cpu_bind(self, part: str) -> Optional[str]:
        """srun's per-step binding: co-located, a host's server apart from its solver ranks."""
        if self.placement is None or self.placement.mode != "colocated":
            return None
        return self.mpi.cpu_bind(part, self.placement.solver)

    def wait_for_nodes(self, ready, what: str) -> None:
        def agents_running() -> None:
            if not self.nodes.running:
                raise NekrsMLError(f"the node agents exited with code {self.nodes.returncode} "
                                   f"before {what} was ready; last lines of "
                                   f"{self.nodes.log_path}:\n{self.nodes.log_tail()}")

        wait_until(ready, NODE_START_TIMEOUT, what, interval=0.2, check=agents_running,
                   see=f"see {self.nodes.log_path}")

    def stop_node_agents(self) -> Optional[int]:
        return self.nodes.stop() if self.nodes is not None else None

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
                                         str(self.run_dir / "trainer.log"), self.supervisor)
        if workflow in ("infer", "train+infer") and (self.placement is None
                                                     or self.placement.mode == "cluster"):
            self.deploy_model()  # co-located on several hosts: each node agent on its server
            if self.settings.inference_backend == "inprocess":
                self.compile_package()
        if self.settings.model_workers and self.placement is None:
            workers = {}
            for index in range(self.settings.model_workers):
                workers[index] = self.parts[f"worker{index}"] = start_worker(
                    self.par, index, self.env, self.run_dir, self.run_dir / f"worker{index}.log",
                    self.supervisor)
            wait_until_serving(self.client, self.ns, workers)
        solver_env = self.env
        if self.solver == "nekrs":  # the case's udf.cmake finds nekrs_ml through these
            from ..environment import udf_build_env

            solver_env = {**udf_build_env(), **self.env}
        argv, solver_env = self.mpi.command(
            solver_program(self.solver, self.par, self.run_dir), self.settings.solver_ranks,
            self.placement.solver if self.placement else None, solver_env,
            hostfile=self.run_dir / "solver.hosts", cpu_bind=self.cpu_bind("solver"))
        self.parts["solver"] = Part("solver", argv, solver_env, cwd,
                                    str(self.run_dir / "solver.log"), self.supervisor)

    def deploy_model(self) -> None:
        """deployModel (relative to the .par) becomes the current version before the solver
        starts; workflow = infer needs a model from somewhere."""
        from ..models import registry

        deployed = deploy_case_model(self.client, self.par, self.ns, "nekrs-ml run", case=self.cfg)
        name = deployed.model_name
        if (deployed.model_file is None and self.settings.workflow == "infer"
                and registry.latest_version(self.client, self.ns, name) is None):
            raise ConfigError(
                f"{self.par.name}: workflow = infer needs a model, and {name!r} is not published: "
                "set deployModel = <model file> in [NEKRS_ML] (or use workflow = train+infer)")

    def compile_package(self) -> None:
        """inferenceBackend = inprocess: the package of the current version's graph exists
        before the solver starts (compiled once per graph; a train+infer run without a deployed
        model gets its packages from the trainer)."""
        from ..models import aot, registry
        from ..models.backend_formats import refuse_inprocess

        name, device = self.settings.model_name, self.settings.inprocess_device
        if registry.latest_version(self.client, self.ns, name) is None:
            return
        refuse_inprocess(registry.load(self.client, self.ns, name)[1])  # ONNX, TF: workers only
        started = time.monotonic()
        graph, compiled = aot.ensure_package(self.client, self.ns, name, device=device)
        if compiled:
            print(f"nekrs-ml run: compiled the in-process package of {name!r} (graph {graph}, "
                  f"{aot.device_kind(device)}) in {time.monotonic() - started:.0f} s", flush=True)

    def stop_parts(self) -> Dict[str, Optional[int]]:
        return {name: part.stop() for name, part in self.parts.items()}
