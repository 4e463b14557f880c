// The sampling window of the training stream (sampling_window.hpp).
#include "sampling_window.hpp"

#include "json_text.hpp"

#include <cmath>

namespace nekrs_ml {

SamplingWindow::SamplingWindow(const CouplingOptions& options) : options_(options) {}

void SamplingWindow::start() {
  steady_ = !(options_.training && options_.sample_start_tolerance > 0);
}

bool SamplingWindow::contains(long tstep, double time) const {
  return steady_ && tstep >= options_.sample_start && time >= options_.sample_start_time;
}

bool SamplingWindow::steadiness_due(long tstep, double time) const {
  return !steady_ && tstep > 0 && tstep % options_.sample_interval == 0 &&
         tstep >= options_.sample_start && time >= options_.sample_start_time;
}

// sampleStartTolerance: the window opens once the wall shear stress is steady, i.e. the means
// of the two halves of the last sampleStartChecks control checks of the area-weighted mean
// |tau_w| (over every rank) differ by at most the tolerance, relative to the newer half.
std::string SamplingWindow::add_steadiness_check(long tstep, double time, double mean_stress) {
  steadiness_history_.push_back(mean_stress);
  const std::size_t checks = static_cast<std::size_t>(options_.sample_start_checks);
  if (steadiness_history_.size() > checks) steadiness_history_.erase(steadiness_history_.begin());
  if (steadiness_history_.size() < checks) return "";
  const std::size_t half = checks / 2;
  double older = 0.0, newer = 0.0;
  for (std::size_t i = 0; i < half; ++i) older += steadiness_history_[i];
  for (std::size_t i = checks - half; i < checks; ++i) newer += steadiness_history_[i];
  older /= static_cast<double>(half);
  newer /= static_cast<double>(half);
  last_change_ = newer != 0 ? std::abs(newer - older) / std::abs(newer) : -1.0;
  if (last_change_ < 0 || last_change_ > options_.sample_start_tolerance) return "";
  steady_ = true;
  steady_step_ = tstep;
  steady_time_ = time;
  return "step " + std::to_string(tstep) + " (time " + json_number(time) + "): the wall shear " +
         "stress is steady (mean " + json_number(newer) + ", change " + json_number(last_change_) +
         " over the last " + std::to_string(checks) + " checks, sampleStartTolerance = " +
         json_number(options_.sample_start_tolerance) + "): the sampling window opens";
}

std::string SamplingWindow::note_snapshot(long tstep, double time) {
  std::string opened;
  if (!window_open_) {
    window_open_ = true;
    first_step_ = tstep;
    first_time_ = time;
    if (options_.sample_start > 0 || options_.sample_start_time > 0) {
      opened = "step " + std::to_string(tstep) + " (time " + json_number(time) + "): the " +
               "sampling window opens (sampleStart = " + std::to_string(options_.sample_start) +
               ", sampleStartTime = " + json_number(options_.sample_start_time) + ")";
    }
  }
  last_step_ = tstep;
  last_time_ = time;
  return opened;
}

std::string SamplingWindow::steadiness_json() const {
  if (!(options_.training && options_.sample_start_tolerance > 0)) return "null";
  std::string s = "{\"tolerance\": " + json_number(options_.sample_start_tolerance);
  s += ", \"checks\": " + std::to_string(options_.sample_start_checks);
  s += ", \"opened_step\": " + (steady_step_ >= 0 ? std::to_string(steady_step_) : std::string("null"));
  s += ", \"opened_time\": " + (steady_step_ >= 0 ? json_number(steady_time_) : std::string("null"));
  s += ", \"last_relative_change\": " + (last_change_ >= 0 ? json_number(last_change_) : std::string("null"));
  return s + "}";
}

// The sampling window: as configured, and the steps and times of the snapshots streamed.
std::string SamplingWindow::json() const {
  const bool any = first_step_ >= 0;
  std::string s = "{\"sample_start\": " + std::to_string(options_.sample_start);
  s += ", \"sample_start_time\": " + json_number(options_.sample_start_time);
  s += ", \"sample_interval\": " + std::to_string(options_.sample_interval);
  s += ", \"steady_start\": " + steadiness_json();
  s += ", \"first_step\": " + (any ? std::to_string(first_step_) : std::string("null"));
  s += ", \"last_step\": " + (any ? std::to_string(last_step_) : std::string("null"));
  s += ", \"first_time\": " + (any ? json_number(first_time_) : std::string("null"));
  s += ", \"last_time\": " + (any ? json_number(last_time_) : std::string("null"));
  return s + "}";
}

} // namespace nekrs_ml
