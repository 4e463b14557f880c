"""Trainer checkpoints: <checkpointDir>/checkpoint_<epoch>.pt, the newest few kept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import torch

from ..errors import ConfigError

KEEP = 3
_NAME = re.compile(r"checkpoint_(\d+)\.pt")


def existing(directory: Path) -> List[Path]:
    """The checkpoints in ``directory``, oldest epoch first."""
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint_*.pt")
             if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save(directory: Path, epoch: int, state: dict) -> Path:
    """Writes atomically (a killed trainer never leaves a torn file), then prunes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint_{epoch}.pt"
    partial = path.with_suffix(".pt.partial")
    torch.save(state, partial)
    partial.replace(path)
    for old in existing(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict:
    paths = existing(directory)
    if not paths:
        raise ConfigError(f"--resume: no checkpoint_<epoch>.pt in {directory}; run without "
                          "--resume or set checkpointDir to the directory of an earlier run")
    return torch.load(paths[-1], map_location="cpu", weights_only=False)
