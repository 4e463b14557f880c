// Test stand-in for NekRS 25.x comm_t (platform->comm): communicator and rank are methods.
#pragma once

#include <mpi.h>

class comm_t {
public:
  comm_t(MPI_Comm commParent, MPI_Comm comm) : _mpiCommParent(commParent), _mpiComm(comm) {
    MPI_Comm_rank(_mpiComm, &_mpiRank);
  }
  MPI_Comm mpiCommParent() const { return _mpiCommParent; }
  MPI_Comm mpiComm() const { return _mpiComm; }
  int mpiRank() const { return _mpiRank; }
  int mpiCommSize() const {
    int size = 0;
    MPI_Comm_size(_mpiComm, &size);
    return size;
  }

private:
  MPI_Comm _mpiCommParent;
  MPI_Comm _mpiComm;
  int _mpiRank = 0;
};
