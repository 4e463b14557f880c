"""Typed options of the model workers and of model deployment: the [NEKRS_ML] section of a case
.par (when one is given) overridden by the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .. import environment
from ..config import Config, load_par


def _case(par: Union[str, Path, Config, None]) -> Optional[Config]:
    if par is None or isinstance(par, Config):
        return par
    return load_par(par)


def _pick(option, case: Optional[Config], key: str, default):
    """The command-line value, else the case's, else the default."""
    if option is not None:
        return option
    return case.get("nekrs_ml", key) if case is not None else default


@dataclass(frozen=True)
class WorkerSettings:
    namespace: str
    worker: int
    device: str
    max_batch: int
    max_wait_s: float
    max_batch_points: int  # 0: the device's default (worker.DEFAULT_CPU_BATCH_POINTS on a CPU)
    reload_interval_s: float
    prefer_export: bool
    threads: Optional[int]
    duration_s: Optional[float]
    smartredis: bool = False  # also run the jobs of SmartRedis clients (smartredisCompat)

    @classmethod
    def resolve(cls, par=None, *, namespace: Optional[str] = None, worker: int = 0,
                device: Optional[str] = None, max_batch: Optional[int] = None,
                max_wait_ms: Optional[float] = None, max_batch_points: Optional[int] = None,
                reload_interval: Optional[float] = None,
                prefer_export: bool = False, threads: Optional[int] = None,
                duration: Optional[float] = None,
                smartredis: Optional[bool] = None) -> "WorkerSettings":
        case = _case(par)
        return cls(
            namespace=environment.resolve_namespace(
                namespace, case.get("nekrs_ml", "namespace") if case else None),
            worker=int(worker),
            device=_pick(device, case, "workerDevice", "cpu"),
            max_batch=_pick(max_batch, case, "maxBatch", 64),
            max_wait_s=_pick(max_wait_ms, case, "maxWaitMs", 0.5) / 1e3,
            max_batch_points=_pick(max_batch_points, case, "maxBatchPoints", 0),
            reload_interval_s=_pick(reload_interval, case, "reloadInterval", 0.25),
            prefer_export=prefer_export,
            threads=threads,
            duration_s=duration,
            smartredis=bool(_pick(smartredis or None, case, "smartredisCompat", False)),
        )


@dataclass(frozen=True)
class DeploySettings:
    """What `nekrs-ml run` deploys before the solver starts: ``model_file`` (deployModel,
    relative to the .par) as ``model_name``, or nothing when deployModel = none."""

    namespace: str
    model_name: str
    model_file: Optional[Path]
    model_file_text: str  # as written in the .par, for messages and the version's origin

    @classmethod
    def from_par(cls, par: Union[str, Path], namespace: Optional[str] = None,
                 case: Optional[Config] = None) -> "DeploySettings":
        case = case if case is not None else load_par(par)
        text = case.get("nekrs_ml", "deployModel")
        model_file = None if text.lower() == "none" else (Path(par).parent / text).resolve()
        if model_file is not None and case.get("nekrs_ml", "inferenceBackend") == "inprocess":
            from ..models.backend_formats import refuse_inprocess_file

            refuse_inprocess_file(model_file, f"{Path(par).name}: deployModel = {text}")
        return cls(
            namespace=environment.resolve_namespace(namespace, case.get("nekrs_ml", "namespace")),
            model_name=case.get("nekrs_ml", "modelName"),
            model_file=model_file,
            model_file_text=text,
        )
