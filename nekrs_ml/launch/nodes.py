"""Hosts of the current allocation: PBS node file, Slurm node list, or this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import List


def allocation_hosts() -> List[str]:
    """Unique host names in allocation order; [] outside a batch job (run locally)."""
    node_file = os.environ.get("PBS_NODEFILE")
    if node_file and os.path.exists(node_file):
        with open(node_file) as handle:
            return _unique(line.strip() for line in handle)
    node_list = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if node_list and shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", node_list], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return _unique(out.split())
    return []


def _unique(names) -> List[str]:
    seen: List[str] = []
    for name in names:
        if name and name not in seen:
            seen.append(name)
    return seen
