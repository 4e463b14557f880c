"""Two trainer ranks that end while gloo still completes a collective whose callback is Python,
run by tests/integration/test_train.py under mpiexec:

    python trainer_exit_program.py leave|return

``leave`` ends each rank through nekrs_ml.train.distributed.leave; ``return`` lets the
interpreter finalise, in which the gloo worker that runs the callback aborts the process.
"""

import sys

import torch
import torch.distributed as dist
from mpi4py import MPI

from nekrs_ml.train.distributed import init_torch_distributed, leave

init_torch_distributed(MPI.COMM_WORLD, torch.device("cpu"))
# 400 MB: the collective completes only after this rank has started to exit
pending = dist.all_reduce(torch.ones(100_000_000), async_op=True).get_future().then(
    lambda future: future.value())
print(f"rank {MPI.COMM_WORLD.rank} done", flush=True)
if sys.argv[1] == "leave":
    leave(0)
