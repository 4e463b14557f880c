// The sampling window of the training stream (Coupling): the steps and times from which
// snapshots are streamed, the automatic start once the wall shear stress is steady
// (sampleStartTolerance), and what the run summary reports of it.
#pragma once

#include "nekrs_ml/coupling.hpp"

#include <string>
#include <vector>

namespace nekrs_ml {

class SamplingWindow {
public:
  explicit SamplingWindow(const CouplingOptions& options);
  // At the coupling's first step: from now on, sampleStartTolerance holds the window closed.
  void start();

  // Whether (tstep, time) lies in the window (sampleStart, sampleStartTime, and with
  // sampleStartTolerance the steadiness of the wall stress, once it was reached).
  bool contains(long tstep, double time) const;
  // Whether this control step feeds the steadiness test (collective: the same on every rank).
  bool steadiness_due(long tstep, double time) const;
  // One check of the steadiness test: the area-weighted mean |tau_w| over every rank. Returns
  // the log line when the window opens with it, else "".
  std::string add_steadiness_check(long tstep, double time, double mean_stress);
  // A snapshot streamed at (tstep, time). Returns the log line when it is the first one of a
  // window that does not start at step 0, else "".
  std::string note_snapshot(long tstep, double time);

  std::string json() const; // "sample_window" of the run summary

private:
  std::string steadiness_json() const;

  const CouplingOptions& options_;
  // Automatic start (sampleStartTolerance): the wall-stress means of the last control checks,
  // and when the window opened.
  bool steady_ = true;
  std::vector<double> steadiness_history_;
  long steady_step_ = -1;
  double steady_time_ = 0.0, last_change_ = -1.0;
  // [first, last] step and time of the snapshots streamed (the same steps on every rank)
  bool window_open_ = false;
  long first_step_ = -1, last_step_ = -1;
  double first_time_ = 0.0, last_time_ = 0.0;
};

} // namespace nekrs_ml
