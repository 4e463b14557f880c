// The wall statistics of a coupled run (Coupling): the wall's geometry, the rows that train
// (all, or the points off element edges), the time sums of the area-weighted wall stress in the
// global frame, the mean-flow momentum balance, and the "wall_stress" part of the run summary.
#pragma once

#include "nekrs_ml/coupling.hpp"

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace nekrs_ml {

class WallStatistics {
public:
  // Takes the solver's geometry of n wall points (dropped when it does not match n) and picks
  // the training rows; `warn` reports a rank whose every point lies on an element edge.
  void start(WallFields::Geometry geometry, std::size_t n, bool train_edge_nodes,
             const std::function<void(const std::string&)>& warn);

  bool known() const { return geometry_.known; }
  // Surface quadrature weight of point i (1 without a geometry).
  double weight(std::size_t i) const { return geometry_.known ? geometry_.weights[i] : 1.0; }
  const std::vector<std::size_t>& train_rows() const { return train_rows_; }
  // The training rows of a [n][columns] array: the array itself when every row trains.
  const double* training_rows(const std::vector<double>& values, std::size_t columns,
                              std::vector<double>& scratch) const;

  // One step of the stress the wall applies / of the resolved stress (wall frame [n][2]).
  void add_applied(const std::vector<double>& tau);
  void add_resolved(const std::vector<double>& tau);
  // Adds sum w tau_x and sum w of a wall stress [n][2] (wall frame) to sums[0], sums[1].
  void add_streamwise_stress(const std::vector<double>& tau, double* sums) const;
  // One control step of the momentum balance (collective: the solver's flow state).
  void add_flow_state(WallFields& fields, double time);

  // This rank's part of the run summary's sum over the ranks, and the JSON of the summed part
  // at totals[at] ("wall_stress"; null unless every one of `ranks` ranks knows its geometry).
  void append_totals(std::vector<double>& totals) const;
  std::size_t totals_size() const { return 3 + stress_sums_.size(); }
  std::string json(const std::vector<double>& totals, std::size_t at, int ranks,
                   const CouplingOptions& options) const;

private:
  void add_wall_stress(const std::vector<double>& tau, bool interior_edge_split,
                       std::vector<double>& sums) const;
  std::string momentum_json(double area, double tau_x) const;

  std::size_t n_ = 0;
  WallFields::Geometry geometry_;
  std::vector<std::size_t> train_rows_;
  // per group (applied, resolved, resolved interior, resolved edge) sum w tau_x, w tau_y,
  // w tau_z and w over the steps of the sampling window
  std::vector<double> stress_sums_ = std::vector<double>(16, 0.0);
  long long applied_steps_ = 0, resolved_steps_ = 0;
  // The momentum balance over the sampling window (control steps): the mean driving gradient,
  // the bulk velocity at the first and the last of them, and the fluid volume.
  long long balance_steps_ = 0;
  double drive_sum_ = 0.0, volume_ = 0.0;
  double first_ub_time_ = 0.0, first_ub_ = 0.0, last_ub_time_ = 0.0, last_ub_ = 0.0;
  bool balance_known_ = true;
};

} // namespace nekrs_ml
