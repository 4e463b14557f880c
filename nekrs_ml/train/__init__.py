"""The online trainer of the wall model (`nekrs-ml train CASE.par`, nekrs_ml.cli.train), run
under mpiexec.

It consumes the snapshots the solver streams into the database, trains an MLP with
DistributedDataParallel over its MPI ranks and publishes torch.export versions (with their
weights for in-process inference) to the model registry (nekrs_ml.models.registry). torch and
mpi4py are imported only by its submodules.
"""
