"""Typed options of the launcher (`nekrs-ml run`) and of the stand-in solver: the [NEKRS_ML] and
[REPRODUCER] sections of a case .par."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .. import environment
from ..config import Config, load_par


@dataclass(frozen=True)
class LaunchSettings:
    workflow: str
    deployment: str
    transport: str
    shards: int
    max_memory: str
    namespace: str
    timeout_s: float
    solver_ranks: int
    trainer_ranks: int
    workers: int
    model_name: str
    inference_backend: str = "worker"
    inprocess_device: str = "cpu"
    smartredis: bool = False      # smartredisCompat
    smartredis_tcp: bool = False  # smartredisTcp
    trainer_nodes: int = 0        # trainerNodes (several hosts)
    db_nodes: int = 1             # dbNodes (cluster on several hosts)
    db_interface: str = "hostname"  # dbInterface
    max_worker_restarts: int = 3  # maxWorkerRestarts
    max_drop_fraction: float = 0.5  # maxDropFraction

    @property
    def training(self) -> bool:
        return self.workflow in ("train", "train+infer")

    @property
    def inferring(self) -> bool:
        return self.workflow in ("infer", "train+infer")

    @property
    def model_workers(self) -> int:
        """Model workers to start: none when the solver evaluates the model in-process, unless
        they serve SmartRedis clients."""
        serve_solver = self.inferring and self.inference_backend == "worker"
        return self.workers if serve_solver or self.smartredis else 0

    @classmethod
    def from_case(cls, case: Config) -> "LaunchSettings":
        ml = case["nekrs_ml"]
        return cls(
            workflow=ml["workflow"],
            deployment=ml["deployment"],
            transport=ml["transport"],
            shards=ml["shards"],
            max_memory=ml["maxMemory"],
            # the orchestrator exports it, so every part of the run agrees
            namespace=environment.resolve_namespace(None, ml["namespace"]),
            timeout_s=ml["timeout"],
            solver_ranks=ml["solverRanks"],
            trainer_ranks=ml["trainerRanks"],
            workers=ml["workers"],
            model_name=ml["modelName"],
            inference_backend=ml["inferenceBackend"],
            inprocess_device=ml["inprocessDevice"],
            smartredis=ml["smartredisCompat"],
            smartredis_tcp=ml["smartredisTcp"],
            trainer_nodes=ml["trainerNodes"],
            db_nodes=ml["dbNodes"],
            db_interface=ml["dbInterface"],
            max_worker_restarts=ml["maxWorkerRestarts"],
            max_drop_fraction=ml["maxDropFraction"],
        )


@dataclass(frozen=True)
class ReproducerSettings:
    """The stand-in solver's channel: [REPRODUCER] plus the sample height of [NEKRS_ML]."""

    steps: int
    points: int
    step_cost_s: float
    re_tau: float
    viscosity: float
    fluctuation: float
    correlation: float
    seed: int
    sample_height: float

    @classmethod
    def from_par(cls, par: Union[str, Path, Config]) -> "ReproducerSettings":
        case = par if isinstance(par, Config) else load_par(par)
        rp = case["reproducer"]
        return cls(steps=rp["steps"], points=rp["points"], step_cost_s=rp["stepCost"],
                   re_tau=rp["reTau"], viscosity=rp["viscosity"], fluctuation=rp["fluctuation"],
                   correlation=rp["correlation"], seed=rp["seed"],
                   sample_height=case.get("nekrs_ml", "sampleHeight"))
