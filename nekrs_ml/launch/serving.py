"""The model side of a run that infers, the same whether the launcher does it (one host) or each
host's node agent does its host's share: the case's deployModel made the current version, the
model workers started, and the wait until they serve."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional

from .. import keys
from ..client import Client
from ..config import Config
from ..errors import NekrsMLError
from ..waiting import wait_until
from .supervisor import Part, Supervisor

WORKER_START_TIMEOUT = 120.0  # s for every model worker to serve (its heartbeat key set)


def deploy_case_model(client: Client, par: Path, namespace: str, speaker: str,
                      case: Optional[Config] = None):
    """The case's deployModel (relative to its .par), when it names one, becomes the current
    version of its model; `speaker` says so ("nekrs-ml run", "nekrs-ml node HOST"). Returns
    the case's DeploySettings."""
    from ..models.deploy import deploy
    from ..serve.settings import DeploySettings

    settings = DeploySettings.from_par(par, namespace=namespace, case=case)
    if settings.model_file is not None:
        version = deploy(client, namespace, settings.model_name, settings.model_file,
                         origin=f"deployModel:{settings.model_file_text}")
        print(f"{speaker}: deployed {settings.model_file} as {settings.model_name!r} v{version}",
              flush=True)
    return settings


def start_worker(par: Path, index: int, env: Dict[str, str], run_dir: Path, log_path: Path,
                 supervisor: Optional[Supervisor] = None) -> Part:
    """Model worker `index` of the case, in its own process group, logging to log_path."""
    argv = [sys.executable, "-m", "nekrs_ml.cli", "serve", str(par), "--worker", str(index)]
    return Part(f"worker{index}", argv, env, str(run_dir), str(log_path), supervisor)


def wait_until_serving(client: Client, namespace: str, workers: Dict[int, Part],
                       timeout: float = WORKER_START_TIMEOUT) -> None:
    """Returns once every worker (by index) has its heartbeat key set, so that the solver's
    first call finds it alive; a worker that exits first ends the wait with its log's tail."""

    def serving() -> bool:
        return all(client.exists(keys.worker_heartbeat(namespace, index)) for index in workers)

    def none_exited() -> None:
        for index, part in workers.items():
            if not part.running:
                raise NekrsMLError(f"model worker {index} exited with code {part.returncode} "
                                   f"before serving; last lines of {part.log_path}:\n"
                                   f"{part.log_tail()}")

    indices = ", ".join(str(index) for index in workers)
    wait_until(serving, timeout, f"model worker{'s' if len(workers) > 1 else ''} {indices}",
               check=none_exited,
               see="see " + ", ".join(part.log_path for part in workers.values()))
