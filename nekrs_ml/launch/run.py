"""One run of a case: the state that its start-up (startup.py), supervision (supervise.py) and
report (run_report.py) share."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..client import Client
from ..config import load_par
from .drops import DropWatch
from .flow import FlowStatistics
from .mpi import MpiLauncher
from .placement import Placement
from .run_report import Reporting
from .settings import LaunchSettings
from .startup import Startup
from .supervise import Supervision
from .supervisor import Part, Supervisor


class Run(Startup, Supervision, Reporting):
    """The case, its settings and what the run has started and seen so far."""

    def __init__(self, par: Path, solver: str, run_dir: Path, trainer_grace: float,
                 supervisor: Optional[Supervisor] = None):
        self.par = par
        self.solver = solver
        self.run_dir = run_dir
        self.trainer_grace = trainer_grace
        self.cfg = load_par(str(par))
        self.settings = LaunchSettings.from_case(self.cfg)
        self.ns = self.settings.namespace
        # the watchdog of the run's parts, and whether their stop is hurried
        self.supervisor = supervisor if supervisor is not None else Supervisor()
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
        self.failure_message = ""  # what failed, where the failing part's name does not say it

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"\nnekrs-ml run: warning: {text}", file=sys.stderr, flush=True)
