// The flow statistics of a coupled run (Coupling): every statsInterval steps (from statsStart /
// statsStartTime on) the wall-parallel velocity moments and the wall shear stress along x,
// summed over the ranks and pushed by rank 0 (docs/protocol.md, "Flow statistics").
#pragma once

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/coupling.hpp"
#include "nekrs_ml/flow_stats.hpp"

#include <functional>
#include <string>
#include <vector>

namespace nekrs_ml {

class WallStatistics;

class FlowStatisticsRecorder {
public:
  FlowStatisticsRecorder(const CouplingOptions& options, Collective& comm, WallFields& fields,
                         Client& client);

  bool due(long tstep, double time) const;
  // The planes of the profiles (collective), at the coupling's first step.
  void start();
  // One record (collective). `applied`: the stress the wall applies, or nullptr before the
  // first inference call; `resolved` gives the resolved stress (a collective call of the
  // solver the first time in a step, after the velocity of the profiles).
  void record(long tstep, double time, double nu, const std::vector<double>* applied,
              const std::function<const std::vector<double>&()>& resolved,
              const WallStatistics& wall);
  std::string json() const; // "statistics" of the run summary

private:
  const CouplingOptions& options_;
  Collective& comm_;
  WallFields& fields_;
  Client& client_;
  // The planes of the profiles, this rank's node weights and velocity, the records streamed
  // (the same count on every rank) and the first and last step recorded.
  ProfileBinning profile_;
  std::vector<double> node_weights_, node_velocity_;
  long long records_ = 0, errors_ = 0;
  long first_step_ = -1, last_step_ = -1;
};

} // namespace nekrs_ml
