"""What every benchmark shares: timing calls, latency summaries in microseconds, and the machine
a record was measured on.

This file imports only the standard library at its top: `redisai_client.py` loads it by path in
SmartRedis's own Python, which has no nekrs_ml (and numpy only where a summary is made)."""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

WARMUP_CALLS = 5  # connections, allocations, server-side key creation, torch's first calls


def time_calls(call: Callable[[], None], count: int, start_at: Optional[float] = None,
               between: Optional[Callable[[], None]] = None) -> Tuple[List[float], float]:
    """WARMUP_CALLS untimed calls, then (from ``start_at``, a time.time() shared by concurrent
    ranks, when given) ``count`` timed calls: (seconds of each call, wall seconds of all).
    ``between`` runs after every call, outside the timing."""
    for _ in range(WARMUP_CALLS):
        call()
        if between is not None:
            between()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    seconds: List[float] = []
    began = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
        if between is not None:
            between()
    return seconds, time.perf_counter() - began


def latency_us(seconds: Sequence[float]) -> Dict[str, float]:
    """p50, p99 and mean of per-call seconds, in microseconds (the unit of every benchmark)."""
    import numpy as np

    us = np.asarray(seconds, dtype=np.float64) * 1e6
    return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean())}


def machine() -> Dict[str, object]:
    """The machine of a run: host, CPU model, cores this process may use, accelerators."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    devices: List[str] = []
    try:
        import torch

        devices = [f"cuda:{i} {torch.cuda.get_device_name(i)}"
                   for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "devices": devices}
