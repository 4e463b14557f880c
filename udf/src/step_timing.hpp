// The time of a coupled run per step and rank (Coupling): the solver's own time between two
// calls of Coupling::step and the coupling's time inside them, and the "timing" part of the
// run summary.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace nekrs_ml {

class StepTiming {
public:
  // Coupling::step entered / left.
  void enter();
  void leave();

  // This rank's part of the run summary's sum over the ranks (4 values), and the JSON of the
  // summed part at totals[at] (null without solver time between calls).
  void append_totals(std::vector<double>& totals) const;
  static std::string json(const std::vector<double>& totals, std::size_t at, int ranks);

private:
  double solver_seconds_ = 0.0, coupling_seconds_ = 0.0;
  long long steps_ = 0, calls_ = 0;
  std::chrono::steady_clock::time_point entered_, left_;
};

} // namespace nekrs_ml
