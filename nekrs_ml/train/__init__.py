"""The online trainer of the wall model (`nekrs-ml train CASE.par`, nekrs_ml.cli.train), run
under mpiexec.

It consumes the snapshots the solver streams into the database, trains an MLP with
DistributedDataParallel over its MPI ranks and publishes versions to the model registry
(nekrs_ml.models.registry): each a torch.export program with its metadata and the weights that
in-process inference swaps in (no TorchScript). At the end it writes the last version as a
deployable model file and trainer.json into the run directory. torch and mpi4py are imported
only by its submodules.
"""
