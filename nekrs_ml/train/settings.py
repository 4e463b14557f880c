"""The trainer's options: the [NEKRS_ML] section of the case .par plus the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from .. import environment
from ..config import load_par
from ..errors import ConfigError
from ..models.registry import DEFAULT_KEEP_VERSIONS
from .data import MAX_SKIPS_IN_A_ROW, Stream


@dataclass(frozen=True)
class Settings:
    namespace: str
    model_name: str
    hidden_layers: Tuple[int, ...]
    learning_rate: float
    batch_size: int
    steps_per_epoch: int
    replay_buffer: int
    validation_fraction: float
    publish_interval: int
    patience: int
    min_snapshots: int
    min_improvement: float
    max_epochs: int
    stop_solver: bool
    train_device: str
    run_dir: Path
    checkpoint_dir: Path
    data_timeout: float
    resume: bool
    max_skips: int = MAX_SKIPS_IN_A_ROW
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    # device kind whose AOTInductor packages the trainer compiles for the solver's in-process
    # inference (None: the run does not evaluate the model in-process)
    compile_device: Optional[str] = None
    export_format: str = "torch-export"  # or "onnx" (nekrs_ml.train.onnx_export)
    # the training streams read (ensemble members); default: one, "solver", in ``namespace``
    streams: Tuple[Stream, ...] = ()
    consumer: str = ""  # its name in the streams' consumer groups (from_args: --consumer or model)
    trainer: Optional[str] = None  # the name in its control keys (None: NS:trainer:...)
    member_sampling: str = "balanced"
    features: str = "dimensional"  # or "wall_units" (nekrs_ml.models.features)

    @classmethod
    def from_args(cls, args) -> "Settings":
        ml = load_par(args.par)["nekrs_ml"]
        run_dir = Path(args.run_dir or os.environ.get(environment.RUN_DIR) or ".").absolute()
        # the orchestrator's namespace wins: the solver writes under the one it exported
        namespace = environment.resolve_namespace(None, ml["namespace"])
        consumer = getattr(args, "consumer", None)
        if consumer is not None:
            _check_name(consumer, "--consumer")
        return cls(
            namespace=namespace,
            streams=parse_streams(getattr(args, "stream", None) or [], namespace),
            consumer=consumer or ml["modelName"],
            trainer=consumer,
            member_sampling=ml["memberSampling"],
            features=ml["features"],
            model_name=ml["modelName"],
            hidden_layers=tuple(ml["hiddenLayers"]),
            learning_rate=ml["learningRate"],
            batch_size=ml["batchSize"],
            steps_per_epoch=ml["stepsPerEpoch"],
            replay_buffer=ml["replayBuffer"],
            validation_fraction=ml["validationFraction"],
            publish_interval=ml["publishInterval"],
            patience=ml["patience"],
            min_snapshots=ml["minSnapshots"],
            min_improvement=ml["minImprovement"],
            max_epochs=ml["maxEpochs"],
            stop_solver=ml["stopSolver"],
            train_device=ml["trainDevice"],
            run_dir=run_dir,
            checkpoint_dir=run_dir / ml["checkpointDir"],
            data_timeout=args.data_timeout,
            resume=args.resume,
            max_skips=getattr(args, "max_skips", MAX_SKIPS_IN_A_ROW),
            keep_versions=ml["keepVersions"],
            compile_device=(ml["inprocessDevice"] if ml["inferenceBackend"] == "inprocess"
                            and ml["workflow"] in ("infer", "train+infer") else None),
            export_format=_export_format(ml),
        )

    @property
    def validation_capacity(self) -> int:
        """The held-out buffer keeps the validation share of what the replay buffer keeps."""
        return max(1, round(self.replay_buffer * self.validation_fraction))


def _check_name(name: str, option: str) -> str:
    if not name or len(name) > 200 or any(c in name for c in "{}:=") \
            or any(c.isspace() for c in name):
        raise ConfigError(f"{option} {name!r}: a name of 1-200 characters without '{{', '}}', "
                          "':', '=' or spaces")
    return name


def parse_streams(values, namespace: str) -> Tuple[Stream, ...]:
    """``--stream NAME=NAMESPACE`` options as streams; none: the one stream ``solver`` of the
    trainer's own namespace."""
    if not values:
        return (Stream("solver", namespace),)
    streams = []
    for value in values:
        name, equals, ns = value.partition("=")
        if not equals or not name or not ns:
            raise ConfigError(f"--stream {value!r}: expected NAME=NAMESPACE (the ensemble member "
                              "and the namespace its solver writes to, e.g. re550=nkml.re550)")
        _check_name(name, "--stream name")
        environment.check_namespace(ns, f"--stream {value!r}: namespace")
        if name in [s.name for s in streams]:
            raise ConfigError(f"--stream {value!r}: stream {name!r} is given twice; give each "
                              "member once")
        streams.append(Stream(name, ns))
    return tuple(streams)


def _export_format(ml) -> str:
    """exportFormat, refused up front where the run could not use it."""
    fmt = ml["exportFormat"]
    if fmt == "onnx":
        if ml["inferenceBackend"] == "inprocess" and ml["workflow"] in ("infer", "train+infer"):
            raise ConfigError("exportFormat = onnx with inferenceBackend = inprocess: the "
                              "in-process path evaluates torch.export models only; set "
                              "inferenceBackend = worker or exportFormat = torch-export")
        from .onnx_export import check_available

        check_available()
    return fmt
