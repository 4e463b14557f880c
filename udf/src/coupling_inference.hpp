// The inference of a coupled run (Coupling): one call of the backend per inference step, the
// checks of its predictions, the fallback wall law when a call gives no usable predictions,
// the failure counters with their rate-limited warnings, and the "inference" part of the run
// summary. Nothing non-finite ever reaches WallFields::apply_wall_stress.
#pragma once

#include "feature_scaling.hpp"

#include "nekrs_ml/coupling.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace nekrs_ml {

class CouplingInference {
public:
  // `client` reads the registry meta of the versions that answer (their feature scheme).
  CouplingInference(const CouplingOptions& options, Collective& comm, WallFields& fields,
                    Client& client, std::unique_ptr<InferenceBackend> backend);

  void set_backend(std::unique_ptr<InferenceBackend> backend) { backend_ = std::move(backend); }
  // At the coupling's first step: n wall points on this rank, the kinematic viscosity nu.
  void start(std::size_t n, double nu);

  // One call on this step's samples [n][3]; the wall gets the predictions or the wall law.
  // Throws Error on a failure with onInferenceError = abort.
  void run(long tstep, const std::vector<double>& inputs);
  // The stress the wall applies (wall frame [n][2]) and, with applyPredictions = false, the
  // model's own stress of the last call that predicted.
  const std::vector<double>& stress() const { return stress_; }
  const std::vector<double>& model_stress() const { return options_.apply ? stress_ : model_stress_; }
  // The a-posteriori check of train+infer: the model's stress of this step against the resolved
  // one on the training rows (relative error per point; rank 0 keeps the L2 error per step).
  void compare(long tstep, const std::vector<double>& resolved,
               const std::vector<std::size_t>& rows);

  long long calls() const { return calls_; }
  long long fallbacks() const { return fallbacks_; }
  long long predicted_steps() const { return predicted_steps_; }
  long long failures(InferenceFailure cause) const {
    return failures_[static_cast<std::size_t>(cause)];
  }
  std::uint64_t version() const { return version_; }
  // The feature scheme this rank's calls scale for: that of the last version that answered.
  FeatureScheme feature_scheme() const { return scheme_; }
  bool feature_scheme_known() const { return scheme_known_; }
  // Whether maxInferenceFailures consecutive calls failed on this rank.
  bool too_many_failures() const { return consecutive_failures_ >= options_.max_failures; }
  // Rank 0's inference counters for the launcher's progress line (JSON).
  std::string progress_json() const;

  // The run summary: this rank's counters and histograms for the sum over the ranks (the
  // fixed counters first: calls, waiting calls, fallbacks, predicted steps, steps with a
  // non-finite sample), and the "inference" JSON of the summed totals.
  // Then the ranks whose calls scale for dimensional and for wall-units models.
  static constexpr std::size_t kCounters = 7;
  static constexpr std::size_t kTotals =
      kCounters + static_cast<std::size_t>(InferenceFailure::count_) + 2 * LogHistogram::kBins;
  void append_totals(std::vector<double>& totals) const;
  std::string json(const std::vector<double>& totals, std::size_t at) const;
  long long nonfinite_inputs() const { return nonfinite_inputs_; }

private:
  bool check_predictions(const InferenceResult& result, InferenceFailure& cause);
  // The feature scheme of `version` of the model: from the cache, else from its registry meta
  // (one GET, once per version). unsupported (with `problem` saying why) for a scheme this
  // solver does not know, or a meta that is gone (not cached: asked again next call).
  FeatureScheme scheme_of(std::uint64_t version, std::string& problem);
  bool current_meta(std::string& meta);
  void predictions_to_stress(std::size_t columns, double factor);
  void fallback_stress();
  void apply_stress(long tstep);
  void record_failure(long tstep, InferenceFailure cause, const std::string& detail);
  // A call of train+infer that found no model (version or package) yet: remembered and logged.
  void note_waiting(long tstep, const std::string& reason);

  const CouplingOptions& options_;
  Collective& comm_;
  WallFields& fields_;
  Client& client_;
  std::unique_ptr<InferenceBackend> backend_;
  std::size_t n_ = 0;
  double nu_ = 0.0;
  const std::vector<double>* inputs_ = nullptr; // this call's samples

  std::vector<double> stress_;
  std::vector<double> model_stress_; // the model's stress when applyPredictions = false
  std::vector<float> model_inputs_, predictions_;
  FeatureScaling scaling_;
  // The scheme the next call's inputs are scaled for (dimensional until a version said
  // otherwise), whether a version said it yet, and the scheme of every version seen.
  FeatureScheme scheme_ = FeatureScheme::dimensional;
  bool scheme_known_ = false;
  std::map<std::uint64_t, std::pair<FeatureScheme, std::string>> scheme_by_version_;
  // counters of this rank
  long long calls_ = 0, waiting_calls_ = 0, fallbacks_ = 0, predicted_steps_ = 0;
  long long consecutive_failures_ = 0, nonfinite_inputs_ = 0;
  std::array<long long, static_cast<std::size_t>(InferenceFailure::count_)> failures_{};
  std::array<long long, static_cast<std::size_t>(InferenceFailure::count_)> warned_{};
  std::uint64_t version_ = 0;
  // What the last call that found no model waited for (empty once predictions come), and when
  // that was last logged (rank 0 logs it at most every kWaitingLogSeconds).
  std::string waiting_for_;
  double waiting_logged_ = -1.0;
  LogHistogram latency_{1e-6, 1e3};   // seconds per inference call
  LogHistogram error_{1e-9, 1e3};     // |pred - resolved| / |resolved| per point, current version
  std::vector<std::array<long long, 3>> version_by_step_; // [first, last, version] (this rank)
  std::vector<std::array<double, 3>> errors_by_step_;     // [step, version, relative L2] (rank 0)
};

} // namespace nekrs_ml
