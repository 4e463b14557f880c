"""Trainer checkpoints: <checkpointDir>/checkpoint_<epoch>.pt, the newest few kept.

A checkpoint holds tensors, numbers, strings and containers only (numpy arrays are stored as
tensors), so that it is read back with ``torch.load(weights_only=True)``: loading a checkpoint
never unpickles an arbitrary object (a planted file cannot run code)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import List

import numpy as np
import torch

from .. import rundir
from ..errors import ConfigError

KEEP = 3
_NAME = re.compile(r"checkpoint_(\d+)\.pt")
_NUMPY = "__numpy__"  # {"__numpy__": tensor}: a numpy array of the trainer's state


def existing(directory: Path) -> List[Path]:
    """The checkpoints in ``directory``, oldest epoch first."""
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint_*.pt")
             if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _plain(value):
    """The state with numpy arrays as tagged tensors and numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        return {_NUMPY: torch.from_numpy(np.array(value))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _restored(value):
    if isinstance(value, dict):
        if set(value) == {_NUMPY}:
            return value[_NUMPY].numpy()
        return {key: _restored(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(item) for item in value)
    return value


def save(directory: Path, epoch: int, state: dict) -> Path:
    """Writes atomically (a killed trainer never leaves a torn file, a full disk no partial
    file, a planted link is never written through), then prunes."""
    rundir.private_dir(directory)
    path = directory / f"checkpoint_{epoch}.pt"
    buffer = io.BytesIO()
    torch.save(_plain(state), buffer)
    rundir.write_file(path, buffer.getvalue(), mode=0o600)
    for old in existing(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict:
    paths = existing(directory)
    if not paths:
        raise ConfigError(f"--resume: no checkpoint_<epoch>.pt in {directory}; run without "
                          "--resume or set checkpointDir to the directory of an earlier run")
    try:
        saved = torch.load(paths[-1], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise ConfigError(
            f"--resume: {paths[-1]} is not a checkpoint of this version of nekrs_ml (it holds "
            f"more than tensors and numbers, and is not unpickled: {lines[0] if lines else exc}"
            "); run without --resume, or remove it to resume from an older one") from None
    return _restored(saved)
