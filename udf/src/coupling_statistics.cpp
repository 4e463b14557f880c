// The flow statistics of a coupled run (coupling_statistics.hpp).
#include "coupling_statistics.hpp"

#include "coupling_log.hpp"
#include "json_text.hpp"
#include "wall_statistics.hpp"

#include "nekrs_ml/keys.hpp"

#include <algorithm>

namespace nekrs_ml {

FlowStatisticsRecorder::FlowStatisticsRecorder(const CouplingOptions& options, Collective& comm,
                                               WallFields& fields, Client& client)
    : options_(options), comm_(comm), fields_(fields), client_(client) {}

bool FlowStatisticsRecorder::due(long tstep, double time) const {
  return options_.stats_interval > 0 && tstep > 0 && tstep % options_.stats_interval == 0 &&
         tstep >= options_.stats_start && time >= options_.stats_start_time;
}

void FlowStatisticsRecorder::start() {
  WallFields::VolumeNodes nodes = fields_.volume_nodes(); // collective
  if (nodes.weights.size() != nodes.y.size()) {
    throw Error("the solver gave " + std::to_string(nodes.y.size()) + " node coordinates and " +
                std::to_string(nodes.weights.size()) + " weights for the flow statistics");
  }
  profile_ = ProfileBinning(comm_, nodes.y); // collective
  if (profile_.empty()) {
    coupling_log(comm_, "no velocity profiles (" + profile_.why_empty() + "); the flow " +
                            "statistics carry the wall shear stress only");
    return;
  }
  node_weights_ = std::move(nodes.weights);
  node_velocity_.resize(3 * profile_.nodes());
  coupling_log(comm_, "flow statistics every " + std::to_string(options_.stats_interval) +
                          " steps on " + std::to_string(profile_.levels().size()) +
                          " planes y = const");
}

// One record: the velocity moments per plane and the area-weighted wall shear stress along x
// (applied, where the coupling sets the BC, and resolved), summed over the ranks; rank 0
// pushes it. A failed push loses that record only.
void FlowStatisticsRecorder::record(long tstep, double time, double nu,
                                    const std::vector<double>* applied,
                                    const std::function<const std::vector<double>&()>& resolved,
                                    const WallStatistics& wall_statistics) {
  const std::size_t levels = profile_.levels().size();
  std::vector<double> sums(levels * kProfileMoments + 4, 0.0);
  if (levels > 0) {
    fields_.volume_velocity(node_velocity_.data()); // collective
    const std::size_t n = profile_.nodes();
    const double* u = node_velocity_.data();
    profile_.add(node_weights_.data(), u, u + n, u + 2 * n, sums.data());
  }
  double* wall = sums.data() + levels * kProfileMoments;
  if (applied) wall_statistics.add_streamwise_stress(*applied, wall);
  wall_statistics.add_streamwise_stress(resolved(), wall + 2);
  comm_.sum(sums.data(), sums.size());
  if (first_step_ < 0) first_step_ = tstep;
  last_step_ = tstep;
  ++records_;
  if (comm_.rank() != 0) return;

  std::string record = "{\"step\": " + std::to_string(tstep) + ", \"time\": " + json_number(time);
  record += ", \"kinematic_viscosity\": " + json_number(nu); // + units without the summary
  record += ", \"tau_w_applied\": " + (wall[1] > 0 ? json_number(wall[0] / wall[1]) : "null");
  record += ", \"tau_w_resolved\": " + (wall[3] > 0 ? json_number(wall[2] / wall[3]) : "null");
  record += ", \"wall_area\": " + json_number(std::max(wall[1], wall[3]));
  record += ", \"y\": [";
  for (std::size_t k = 0; k < levels; ++k) {
    record += (k ? ", " : "") + json_number(profile_.levels()[k]);
  }
  record += "], \"moments\": [";
  for (std::size_t k = 0; k < levels; ++k) {
    record += k ? ", [" : "[";
    for (std::size_t m = 0; m < kProfileMoments; ++m) {
      record += (m ? ", " : "") + json_number(sums[k * kProfileMoments + m]);
    }
    record += "]";
  }
  record += "]}";
  const std::string key = keys::flow_stats(options_.ns);
  const std::string keep_from = std::to_string(-keys::kFlowStatsRetained);
  try {
    const auto replies = client_.pipeline({Command::of(key, {"RPUSH", key, record}),
                                           Command::of(key, {"LTRIM", key, keep_from, "-1"})});
    for (const auto& reply : replies) {
      if (reply.is_error()) throw ServerError(key + ": " + reply.text);
    }
  } catch (const Error& error) {
    if (errors_++ % 100 == 0) {
      coupling_warn(comm_, "step " + std::to_string(tstep) + ": a flow-statistics record was " +
                               "lost (" + std::to_string(errors_) + " so far): " + error.what());
    }
  }
}

std::string FlowStatisticsRecorder::json() const {
  if (options_.stats_interval <= 0) return "null";
  std::string s = "{\"interval\": " + std::to_string(options_.stats_interval);
  s += ", \"start\": " + std::to_string(options_.stats_start);
  s += ", \"start_time\": " + json_number(options_.stats_start_time);
  s += ", \"planes\": " + std::to_string(profile_.levels().size());
  s += ", \"no_profile_because\": " +
       (profile_.empty() ? json_string(profile_.why_empty()) : std::string("null"));
  s += ", \"records\": " + std::to_string(records_);
  s += ", \"records_lost\": " + std::to_string(errors_);
  s += ", \"first_step\": " + (first_step_ >= 0 ? std::to_string(first_step_) : "null");
  s += ", \"last_step\": " + (last_step_ >= 0 ? std::to_string(last_step_) : "null");
  return s + "}";
}

} // namespace nekrs_ml
