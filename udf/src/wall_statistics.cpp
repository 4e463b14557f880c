// The wall statistics of a coupled run (wall_statistics.hpp).
#include "wall_statistics.hpp"

#include "json_text.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace nekrs_ml {

void WallStatistics::start(WallFields::Geometry geometry, std::size_t n, bool train_edge_nodes,
                           const std::function<void(const std::string&)>& warn) {
  n_ = n;
  geometry_ = std::move(geometry);
  const bool geometry_ok = geometry_.known && geometry_.weights.size() == n_ &&
                           geometry_.tangents1.size() == 3 * n_ &&
                           geometry_.tangents2.size() == 3 * n_ &&
                           geometry_.on_element_edge.size() == n_;
  if (!geometry_ok) geometry_ = {};
  train_rows_.clear();
  const auto& edge = geometry_.on_element_edge;
  for (std::size_t i = 0; i < n_; ++i) {
    if (train_edge_nodes || edge.empty() || !edge[i]) train_rows_.push_back(i);
  }
  if (train_rows_.empty() && n_ > 0) { // e.g. N = 1: every node is an edge node
    warn("every wall point of this rank lies on an element edge: all of them train "
         "(trainingNodes = interior needs polynomial order N >= 2)");
    for (std::size_t i = 0; i < n_; ++i) train_rows_.push_back(i);
  }
}

const double* WallStatistics::training_rows(const std::vector<double>& values,
                                            std::size_t columns,
                                            std::vector<double>& scratch) const {
  if (train_rows_.size() == n_) return values.data();
  scratch.resize(train_rows_.size() * columns);
  for (std::size_t r = 0; r < train_rows_.size(); ++r) {
    std::copy_n(values.data() + train_rows_[r] * columns, columns, scratch.data() + r * columns);
  }
  return scratch.data();
}

void WallStatistics::add_applied(const std::vector<double>& tau) {
  add_wall_stress(tau, false, stress_sums_);
  ++applied_steps_;
}

void WallStatistics::add_resolved(const std::vector<double>& tau) {
  add_wall_stress(tau, true, stress_sums_); // all wall points, split by edge
  ++resolved_steps_;
}

// Adds the area-weighted stress [n_][2] (wall frame) in the global frame to group 0 (applied)
// or, with interior_edge_split, to groups 1 (all), 2 (off edges) and 3 (edges).
void WallStatistics::add_wall_stress(const std::vector<double>& tau, bool interior_edge_split,
                                     std::vector<double>& sums) const {
  const auto& w = geometry_.weights;
  const auto& t1 = geometry_.tangents1;
  const auto& t2 = geometry_.tangents2;
  for (std::size_t i = 0; i < n_; ++i) {
    if (!std::isfinite(tau[2 * i]) || !std::isfinite(tau[2 * i + 1])) continue;
    double v[4];
    for (int c = 0; c < 3; ++c) v[c] = w[i] * (tau[2 * i] * t1[3 * i + c] + tau[2 * i + 1] * t2[3 * i + c]);
    v[3] = w[i];
    const std::size_t groups[2] = {interior_edge_split ? 1u : 0u,
                                   geometry_.on_element_edge[i] ? 3u : 2u};
    for (int g = 0; g < (interior_edge_split ? 2 : 1); ++g) {
      for (int c = 0; c < 4; ++c) sums[4 * groups[g] + c] += v[c];
    }
  }
}

void WallStatistics::add_streamwise_stress(const std::vector<double>& tau, double* sums) const {
  if (!geometry_.known) return;
  std::vector<double> groups(16, 0.0);
  add_wall_stress(tau, false, groups); // group 0: the stress (x, y, z) and the area
  sums[0] += groups[0];
  sums[1] += groups[3];
}

void WallStatistics::add_flow_state(WallFields& fields, double time) {
  if (!balance_known_) return;
  WallFields::FlowState state;
  if (!fields.flow_state(state) || !std::isfinite(state.driving_gradient) ||
      !std::isfinite(state.bulk_velocity) || !(state.volume > 0)) {
    balance_known_ = false; // the same answer on every rank: collective calls stay in step
    return;
  }
  if (balance_steps_++ == 0) {
    first_ub_time_ = time;
    first_ub_ = state.bulk_velocity;
  }
  last_ub_time_ = time;
  last_ub_ = state.bulk_velocity;
  drive_sum_ += state.driving_gradient;
  volume_ = state.volume;
}

void WallStatistics::append_totals(std::vector<double>& totals) const {
  totals.push_back(static_cast<double>(train_rows_.size()));
  totals.push_back(geometry_.known ? 1.0 : 0.0); // ranks that know their geometry
  totals.push_back(std::accumulate(geometry_.weights.begin(), geometry_.weights.end(), 0.0));
  totals.insert(totals.end(), stress_sums_.begin(), stress_sums_.end());
}

// The momentum balance of the mean flow along x: the wall shear stress that the driving
// gradient and the change of the bulk velocity imply, (dp/dx - dU_b/dt) V / A, beside the
// area-weighted stress measured at the wall.
std::string WallStatistics::momentum_json(double area, double tau_x) const {
  if (!balance_known_ || balance_steps_ < 2 || !(area > 0)) return "null";
  const double drive = drive_sum_ / static_cast<double>(balance_steps_);
  const double dt = last_ub_time_ - first_ub_time_;
  const double dub_dt = dt > 0 ? (last_ub_ - first_ub_) / dt : 0.0;
  const double implied = (drive - dub_dt) * volume_ / area;
  std::string s = "{\"steps\": " + std::to_string(balance_steps_);
  s += ", \"driving_gradient\": " + json_number(drive);
  s += ", \"bulk_velocity\": [" + json_number(first_ub_) + ", " + json_number(last_ub_) + "]";
  s += ", \"time\": [" + json_number(first_ub_time_) + ", " + json_number(last_ub_time_) + "]";
  s += ", \"dUb_dt\": " + json_number(dub_dt);
  s += ", \"volume\": " + json_number(volume_);
  s += ", \"tau_w_implied\": " + json_number(implied);
  s += ", \"tau_w_measured\": " + (std::isfinite(tau_x) ? json_number(tau_x) : std::string("null"));
  s += ", \"measured_over_implied\": " +
       (implied != 0 && std::isfinite(tau_x) ? json_number(tau_x / implied) : std::string("null"));
  return s + "}";
}

// "wall_stress": the wall area, the training rows, and the time mean over the sampling window
// of the area-weighted wall stress vector (global frame) that was applied and that was resolved
// (all points, off element edges, on element edges). null when the solver gives no geometry.
std::string WallStatistics::json(const std::vector<double>& totals, std::size_t at, int ranks,
                                 const CouplingOptions& options) const {
  const double trained = totals[at], ranks_with_geometry = totals[at + 1], area = totals[at + 2];
  const double* sums = &totals[at + 3];
  if (ranks_with_geometry < ranks) return "null";
  auto group = [&](int g, long long steps) {
    const double* s = sums + 4 * g;
    if (steps == 0 || !(s[3] > 0)) return std::string("null");
    return "{\"mean\": [" + json_number(s[0] / s[3]) + ", " + json_number(s[1] / s[3]) + ", " +
           json_number(s[2] / s[3]) + "], \"magnitude\": " +
           json_number(std::sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2]) / s[3]) +
           ", \"steps\": " + std::to_string(steps) + "}";
  };
  std::string s = "{\"area\": " + json_number(area);
  if (options.training) {
    s += ", \"training_nodes\": " + json_string(options.train_edge_nodes ? "all" : "interior");
    s += ", \"points_trained\": " + json_number(trained);
  } else {
    s += ", \"training_nodes\": null, \"points_trained\": null";
  }
  s += ", \"applied\": " + group(0, applied_steps_);
  s += ", \"resolved\": " + group(1, resolved_steps_);
  s += ", \"resolved_off_edges\": " + group(2, resolved_steps_);
  s += ", \"resolved_on_edges\": " + group(3, resolved_steps_);
  // measured: the applied stress where the model sets the BC, else the resolved one
  const int measured = applied_steps_ > 0 ? 0 : 1;
  const double* m = sums + 4 * measured;
  const bool have = (measured == 0 ? applied_steps_ : resolved_steps_) > 0 && m[3] > 0;
  s += ", \"momentum_balance\": " +
       momentum_json(area, have ? m[0] / m[3] : std::nan(""));
  return s + "}";
}

} // namespace nekrs_ml
