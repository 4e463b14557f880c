// The time of a coupled run per step and rank (step_timing.hpp).
#include "step_timing.hpp"

#include "json_text.hpp"

namespace nekrs_ml {

void StepTiming::enter() {
  entered_ = std::chrono::steady_clock::now();
  if (steps_++ > 0) solver_seconds_ += std::chrono::duration<double>(entered_ - left_).count();
}

void StepTiming::leave() {
  left_ = std::chrono::steady_clock::now();
  coupling_seconds_ += std::chrono::duration<double>(left_ - entered_).count();
  ++calls_;
}

void StepTiming::append_totals(std::vector<double>& totals) const {
  totals.push_back(solver_seconds_);
  totals.push_back(coupling_seconds_);
  totals.push_back(static_cast<double>(steps_));
  totals.push_back(static_cast<double>(calls_)); // the calls that ended before this sum
}

// "timing": per step and rank, the solver's own time (between two calls) and the coupling's
// (inside step(): sampling, snapshots, inference, statistics, control), and the coupling's share.
std::string StepTiming::json(const std::vector<double>& totals, std::size_t at, int ranks) {
  const double solver = totals[at], coupling = totals[at + 1], steps = totals[at + 2];
  const double calls = totals[at + 3];
  if (steps <= ranks || calls <= 0) return "null"; // no solver time between calls
  const double intervals = steps - ranks; // the first call of each rank has none
  const double per_step = solver / intervals, coupling_per_step = coupling / calls;
  std::string s = "{\"steps\": " + json_number(steps / ranks);
  s += ", \"solver_seconds_per_step\": " + json_number(per_step);
  s += ", \"coupling_seconds_per_step\": " + json_number(coupling_per_step);
  s += ", \"coupling_fraction\": " + json_number(coupling_per_step / (per_step + coupling_per_step));
  return s + "}";
}

} // namespace nekrs_ml
