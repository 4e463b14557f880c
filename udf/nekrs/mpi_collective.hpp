// The coupling's collective operations over an MPI communicator (the core itself has no MPI).
#pragma once

#include "nekrs_ml/coupling.hpp"

#include <mpi.h>

namespace nekrs_ml::nekrs {

class MpiCollective : public Collective {
public:
  explicit MpiCollective(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm node;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    int node_rank = 0;
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_free(&node);
    node_leader_ = node_rank == 0;
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool node_leader() const override { return node_leader_; }
  void sum(double* values, std::size_t count) override {
    MPI_Allreduce(MPI_IN_PLACE, values, static_cast<int>(count), MPI_DOUBLE, MPI_SUM, comm_);
  }
  void barrier() override { MPI_Barrier(comm_); }

private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  bool node_leader_ = true;
};

} // namespace nekrs_ml::nekrs
