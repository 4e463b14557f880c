"""`nekrs-ml run CASE.par --solver reproducer|nekrs`: the whole workflow in one command.

Starts the orchestrator in the configured deployment, then the trainer and the solver, each
under its own mpiexec (startup.py); shows live progress (progress.py) and watches the parts
(supervise.py); stops everything when the solver is done, on Ctrl-C, or when a part dies
(execute.py); writes report.json and plots into the run directory (run_report.py, report.py)
and ends with one line (summary.py).
"""

from .execute import (EXIT_DATA_DROPPED, EXIT_DISK_FULL, EXIT_INFERENCE, EXIT_INTERRUPTED,
                      EXIT_NO_MODEL, EXIT_OK, EXIT_ORCHESTRATOR, EXIT_SOLVER, EXIT_TRAINER,
                      execute, stale_outputs)
from .nekrs_case import nekrs_run_length
from .progress import Progress
from .run import Run
from .startup import solver_program
from .summary import summarise

__all__ = ["EXIT_DATA_DROPPED", "EXIT_DISK_FULL", "EXIT_INFERENCE", "EXIT_INTERRUPTED",
           "EXIT_NO_MODEL", "EXIT_OK", "EXIT_ORCHESTRATOR", "EXIT_SOLVER", "EXIT_TRAINER",
           "Progress", "Run", "execute", "nekrs_run_length", "solver_program", "stale_outputs",
           "summarise"]
