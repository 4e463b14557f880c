"""The trainer's ranks: MPI (mpi4py) for set-up and bookkeeping, torch.distributed for the
gradient all-reduce of DistributedDataParallel."""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, NoReturn, TypeVar

import torch
import torch.distributed as dist
from mpi4py import MPI

from ..client import Client
from ..errors import ConfigError, NekrsMLError
from ..processes import free_port

T = TypeVar("T")


class TrainingFailed(NekrsMLError):
    """A failure that every rank knows about, so all of them can exit with code 1."""


@dataclass
class World:
    comm: MPI.Comm  # every trainer rank
    group: MPI.Comm  # the trainer ranks that use the same server as this one

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def leader(self) -> bool:
        """The rank that writes this server's copy of models and stop requests."""
        return self.group.rank == 0


def collectively(comm: MPI.Comm, action: Callable[[], T]) -> T:
    """Runs ``action`` on every rank; when it fails on any rank, every rank raises that error,
    so no rank waits in a collective for a peer that has given up."""
    try:
        result, error = action(), None
    except Exception as exc:  # noqa: BLE001 - any set-up error is reported, not just ours
        lines = str(exc).strip().splitlines()
        result, error = None, lines[0] if lines else type(exc).__name__
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise TrainingFailed(errors[0])
    return result


def pick_device(spec: str, local_rank: int) -> torch.device:
    """trainDevice auto|cpu|cuda|cuda:N; plain cuda gives each rank of a node its own GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise ConfigError(f"trainDevice = {spec!r} is not valid; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"trainDevice = {spec}: this torch has no usable CUDA device; use "
                          "trainDevice = cpu (or auto)")
    count = torch.cuda.device_count()
    index = int(spec[5:]) if ":" in spec else local_rank % count
    if index >= count:
        raise ConfigError(f"trainDevice = {spec}: only {count} CUDA device(s) visible")
    return torch.device("cuda", index)


def local_rank(comm: MPI.Comm) -> int:
    """This rank's number among the ranks of its node."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.rank
    finally:
        node.Free()


def server_group(comm: MPI.Comm, client: Client) -> MPI.Comm:
    """The ranks connected to the same server(s) as this one (colocated: one group per node)."""
    address = ",".join(client.addresses)
    color = sorted(set(comm.allgather(address))).index(address)
    return comm.Split(color, comm.rank)


def init_torch_distributed(comm: MPI.Comm, device: torch.device) -> None:
    """Rendezvous at a free port picked by rank 0 on its host (loopback when on one node)."""
    hosts = comm.allgather(socket.gethostname())
    host = "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]
    port = comm.bcast(free_port("0.0.0.0") if comm.rank == 0 else None, root=0)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each rank's communicator to its device
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{host}:{port}", rank=comm.rank, world_size=comm.size,
        timeout=timedelta(minutes=10))


def leave(code: int) -> NoReturn:
    """Ends this trainer process with ``code`` once ``main`` is done, without the interpreter's
    finalisation.

    DistributedDataParallel's reducer keeps its process group alive from C++ until the process
    ends, so gloo's worker threads outlive the interpreter. A worker that takes the GIL while
    the interpreter finalises (a collective's completion, or its last reference to a tensor
    that Python created) is ended by the runtime through C++ frames that may not be unwound,
    and the process aborts (SIGABRT) after training had ended well. The streams are flushed
    and MPI finalised here, which is all the finalisation a trainer rank needs."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more can be said there
            pass
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
    os._exit(code)
