// The inference of a coupled run (coupling_inference.hpp).
#include "coupling_inference.hpp"

#include "coupling_log.hpp"
#include "json_text.hpp"

#include "nekrs_ml/inprocess.hpp"
#include "nekrs_ml/keys.hpp"
#include "nekrs_ml/wall.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <cmath>
#include <set>

namespace nekrs_ml {
namespace {

constexpr std::size_t kCauses = static_cast<std::size_t>(InferenceFailure::count_);
constexpr int kInputs = 3;  // [u.t1, u.t2, u.n]
constexpr int kTargets = 2; // [tau.t1, tau.t2]

bool all_finite(const double* values, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) return false;
  }
  return true;
}

} // namespace

CouplingInference::CouplingInference(const CouplingOptions& options, Collective& comm,
                                     WallFields& fields, Client& client,
                                     std::unique_ptr<InferenceBackend> backend)
    : options_(options), comm_(comm), fields_(fields), client_(client),
      backend_(std::move(backend)) {}

void CouplingInference::start(std::size_t n, double nu) {
  n_ = n;
  nu_ = nu;
  scaling_ = FeatureScaling(options_.sample_height, nu_);
  stress_.assign(kTargets * n_, 0.0);
  model_inputs_.resize(kInputs * n_);
  predictions_.resize(kTargets * n_);
}

void CouplingInference::note_waiting(long tstep, const std::string& reason) {
  constexpr double kWaitingLogSeconds = 30.0;
  waiting_for_ = reason;
  const double now = std::chrono::duration<double>(
                         std::chrono::steady_clock::now().time_since_epoch()).count();
  if (waiting_logged_ < 0 || now - waiting_logged_ >= kWaitingLogSeconds) {
    waiting_logged_ = now;
    coupling_log(comm_, "step " + std::to_string(tstep) +
                            ": no model yet, the wall law meanwhile: " + reason);
  }
}

std::string CouplingInference::progress_json() const {
  return "{\"version\": " + std::to_string(version_) +
         ", \"calls\": " + std::to_string(calls_ + waiting_calls_) +
         ", \"predicted\": " + std::to_string(predicted_steps_) +
         ", \"fallbacks\": " + std::to_string(fallbacks_) +
         ", \"waiting_for\": " + (waiting_for_.empty() ? std::string("null")
                                                        : json_string(waiting_for_)) + "}";
}

void CouplingInference::run(long tstep, const std::vector<double>& inputs) {
  inputs_ = &inputs;
  if (n_ == 0) { // nothing to predict on this rank; it still takes part in collectives
    ++calls_;
    return;
  }
  // The inputs are scaled for the scheme of the last version that answered: a reply of a
  // version with another scheme is not applied (below), and the next call scales for it.
  const FeatureScheme scaled_for = scheme_;
  scaling_.inputs(scaled_for, inputs.data(), model_inputs_.data(), inputs.size());
  InferenceFailure cause = InferenceFailure::timeout;
  std::string detail;
  bool ok = false;
  bool rescaled = false; // the reply came from a version of another scheme: not a failure
  try {
    const InferenceResult result = backend_->run(
        options_.model, TensorHeader{DType::float32, {n_, static_cast<std::uint64_t>(kInputs)}},
        model_inputs_.data(), predictions_.data(), predictions_.size() * sizeof(float));
    latency_.add(result.seconds);
    const bool usable = check_predictions(result, cause);
    // The scheme first: predictions of inputs scaled for another scheme may be anything,
    // even non-finite, and are not the model's fault.
    const FeatureScheme answered = scheme_of(result.version, detail);
    if (answered == FeatureScheme::unsupported) {
      cause = InferenceFailure::features;
    } else if (answered != scaled_for) {
      cause = InferenceFailure::features;
      rescaled = true;
      scheme_ = answered;
      scheme_known_ = true;
      coupling_log(comm_, "step " + std::to_string(tstep) + ": " + options_.model + " version " +
                              std::to_string(result.version) + " takes " +
                              feature_scheme_name(answered) + " features; this step uses the "
                              "wall law, the next calls scale for them");
    } else if (usable) {
      scheme_known_ = true;
      if (result.version != version_) {
        if (version_ != 0 || comm_.rank() == 0) {
          coupling_log(comm_, "step " + std::to_string(tstep) + ": predictions of " +
                                  options_.model + " version " + std::to_string(result.version));
        }
        version_ = result.version;
        std::fill(error_.bins().begin(), error_.bins().end(), 0.0); // error of this version only
      }
      if (version_by_step_.empty() || version_by_step_.back()[2] != static_cast<long long>(version_)) {
        version_by_step_.push_back({tstep, tstep, static_cast<long long>(version_)});
      } else {
        version_by_step_.back()[1] = tstep;
      }
      predictions_to_stress(result.header.shape.size() == 2 ? result.header.shape[1] : 0,
                            scaling_.stress_factor(answered));
      ok = true;
    } else {
      detail = "the predictions of " + options_.model + " version " +
               std::to_string(result.version) + " are " +
               (cause == InferenceFailure::not_finite ? "not finite" : "negative magnitudes");
    }
  } catch (const KeyNotFoundError& error) {
    if (!options_.infer_only && version_ == 0) {
      // train+infer before the trainer's first version (or its package): the wall law, as planned
      ++waiting_calls_;
      note_waiting(tstep, error.what());
      fallback_stress();
      apply_stress(tstep);
      return;
    }
    cause = dynamic_cast<const PackageMissingError*>(&error) ? InferenceFailure::package_missing
                                                             : InferenceFailure::unknown_model;
    detail = error.what();
  } catch (const WorkerUnavailableError& error) {
    cause = InferenceFailure::worker_unavailable;
    detail = error.what();
  } catch (const TimeoutError& error) {
    cause = InferenceFailure::timeout;
    detail = error.what();
  } catch (const ModelError& error) {
    cause = InferenceFailure::model_error;
    detail = error.what();
  } catch (const TensorFormatError& error) {
    cause = InferenceFailure::bad_output;
    detail = error.what();
  } catch (const ConnectionError& error) {
    cause = InferenceFailure::connection;
    detail = error.what();
  } catch (const ServerError& error) {
    cause = InferenceFailure::server_error;
    detail = error.what();
  }
  ++calls_;
  if (rescaled) { // expected once per change of scheme: counted, never an error
    ++failures_[static_cast<std::size_t>(InferenceFailure::features)];
    ++fallbacks_;
    fallback_stress();
  } else if (ok) {
    waiting_for_.clear();
    consecutive_failures_ = 0;
    ++predicted_steps_;
    if (!options_.apply) { // predict and report only: the wall law stays the BC
      model_stress_ = stress_;
      fallback_stress();
    }
  } else {
    record_failure(tstep, cause, detail);
    fallback_stress();
  }
  apply_stress(tstep);
}

bool CouplingInference::check_predictions(const InferenceResult& result, InferenceFailure& cause) {
  const auto& shape = result.header.shape;
  if (shape.size() != 2 || shape[0] != n_ || (shape[1] != 1 && shape[1] != 2)) {
    throw TensorFormatError(options_.model + " answered " + result.header.describe() +
                            "; expected [" + std::to_string(n_) + ", 2] (tau.t1, tau.t2) or [" +
                            std::to_string(n_) + ", 1] (|tau|)");
  }
  const std::size_t count = n_ * shape[1];
  for (std::size_t i = 0; i < count; ++i) {
    if (!std::isfinite(predictions_[i])) {
      cause = InferenceFailure::not_finite;
      return false;
    }
    if (shape[1] == 1 && predictions_[i] < 0) {
      cause = InferenceFailure::negative_magnitude;
      return false;
    }
  }
  return true;
}

// The meta of the model's current version. A version pruned by keepVersions may still answer
// from a worker that loaded it; the registry keeps a model name's features, so the current
// version's meta names the same scheme.
bool CouplingInference::current_meta(std::string& meta) {
  std::string latest;
  if (!client_.get_string(keys::model_latest(options_.model_ns, options_.model), latest)) return false;
  std::uint64_t version = 0;
  try {
    version = std::stoull(latest);
  } catch (const std::exception&) {
    return false;
  }
  return version > 0 &&
         client_.get_string(keys::model_meta(options_.model_ns, options_.model, version), meta);
}

FeatureScheme CouplingInference::scheme_of(std::uint64_t version, std::string& problem) {
  if (version == 0) return FeatureScheme::dimensional; // a backend that names no version
  const auto known = scheme_by_version_.find(version);
  if (known != scheme_by_version_.end()) {
    problem = known->second.second;
    return known->second.first;
  }
  const std::string key = keys::model_meta(options_.model_ns, options_.model, version);
  std::string meta;
  if (!client_.get_string(key, meta) && !current_meta(meta)) {
    // Not cached: a reply is never applied without knowing its scaling; the next call asks
    // again (by then the model usually answers with a newer version, whose meta exists).
    problem = "the registry meta of " + options_.model + " version " + std::to_string(version) +
              " ('" + key + "') is missing, so the scaling of its features is unknown (a "
              "version pruned by keepVersions while it still answers?)";
    return FeatureScheme::unsupported;
  }
  std::string value;
  const FeatureScheme scheme = feature_scheme_of_meta(meta, value);
  problem.clear();
  if (scheme == FeatureScheme::unsupported) {
    problem = "'" + key + "' names the features '" + value + "', which this solver does not "
              "know (dimensional or wall_units); publish the model with one of those";
  }
  scheme_by_version_[version] = {scheme, problem};
  return scheme;
}

// Predictions -> stress_ (times `factor`, the scaling of the model's features back to the
// kinematic stress): a vector model gives [tau.t1, tau.t2]; a magnitude model |tau|, applied
// along the tangential velocity at the sample point.
void CouplingInference::predictions_to_stress(std::size_t columns, double factor) {
  const std::vector<double>& inputs = *inputs_;
  for (std::size_t i = 0; i < n_; ++i) {
    if (columns == 2) {
      stress_[2 * i] = factor * predictions_[2 * i];
      stress_[2 * i + 1] = factor * predictions_[2 * i + 1];
    } else {
      const double u1 = inputs[3 * i], u2 = inputs[3 * i + 1];
      const double speed = std::hypot(u1, u2);
      const double magnitude = factor * predictions_[i];
      stress_[2 * i] = speed > 0 ? magnitude * u1 / speed : 0.0;
      stress_[2 * i + 1] = speed > 0 ? magnitude * u2 / speed : 0.0;
    }
  }
}

void CouplingInference::fallback_stress() {
  wall_law_stress(inputs_->data(), n_, options_.sample_height, nu_, stress_.data());
}

void CouplingInference::apply_stress(long tstep) {
  if (!all_finite(stress_.data(), stress_.size())) {
    // only a non-finite solver field gets here (the wall law of a NaN velocity)
    for (double& value : stress_) {
      if (!std::isfinite(value)) value = 0.0;
    }
    if (nonfinite_inputs_++ == 0) {
      coupling_warn(comm_, "step " + std::to_string(tstep) + ": the sampled velocity is not "
                           "finite; zero wall stress applied at those points");
    }
  }
  fields_.apply_wall_stress(stress_.data());
}

void CouplingInference::record_failure(long tstep, InferenceFailure cause,
                                       const std::string& detail) {
  if (options_.on_error == CouplingOptions::OnError::abort) {
    throw Error("step " + std::to_string(tstep) + ": inference failed (" + failure_name(cause) +
                "): " + detail + " (onInferenceError = abort)");
  }
  const auto index = static_cast<std::size_t>(cause);
  ++failures_[index];
  ++fallbacks_;
  ++consecutive_failures_;
  // rate limit: the first of each cause, then every 100th
  if (warned_[index]++ % 100 == 0) {
    coupling_warn(comm_, "step " + std::to_string(tstep) + ": inference failed (" +
                             failure_name(cause) + ", " + std::to_string(failures_[index]) +
                             " so far): " + detail + "; this step uses the fallback wall law");
  }
}

void CouplingInference::compare(long tstep, const std::vector<double>& resolved,
                                const std::vector<std::size_t>& rows) {
  const std::vector<double>& predicted = model_stress();
  double sums[2] = {0.0, 0.0};
  for (const std::size_t i : rows) { // the targets of edge nodes are biased
    const double d1 = predicted[2 * i] - resolved[2 * i];
    const double d2 = predicted[2 * i + 1] - resolved[2 * i + 1];
    const double t = std::hypot(resolved[2 * i], resolved[2 * i + 1]);
    sums[0] += d1 * d1 + d2 * d2;
    sums[1] += t * t;
    if (t > 0) error_.add(std::hypot(d1, d2) / t);
  }
  if (comm_.rank() == 0) {
    errors_by_step_.push_back({static_cast<double>(tstep), static_cast<double>(version_),
                               sums[1] > 0 ? std::sqrt(sums[0] / sums[1]) : std::nan("")});
  }
}

void CouplingInference::append_totals(std::vector<double>& totals) const {
  totals.push_back(static_cast<double>(calls_));
  totals.push_back(static_cast<double>(waiting_calls_));
  totals.push_back(static_cast<double>(fallbacks_));
  totals.push_back(static_cast<double>(predicted_steps_));
  totals.push_back(static_cast<double>(nonfinite_inputs_));
  totals.push_back(scheme_known_ && scheme_ == FeatureScheme::dimensional ? 1.0 : 0.0);
  totals.push_back(scheme_known_ && scheme_ == FeatureScheme::wall_units ? 1.0 : 0.0);
  for (const long long count : failures_) totals.push_back(static_cast<double>(count));
  totals.insert(totals.end(), latency_.bins().begin(), latency_.bins().end());
  totals.insert(totals.end(), error_.bins().begin(), error_.bins().end());
}

std::string CouplingInference::json(const std::vector<double>& totals, std::size_t at) const {
  const double calls = totals[at], waiting_calls = totals[at + 1], fallbacks = totals[at + 2];
  const double predicted = totals[at + 3];
  // the scheme the ranks' calls scale for (null: no version answered yet)
  const double dimensional_ranks = totals[at + 5], wall_units_ranks = totals[at + 6];
  const std::string features =
      dimensional_ranks > 0 && wall_units_ranks > 0 ? json_string("mixed")
      : wall_units_ranks > 0                        ? json_string("wall_units")
      : dimensional_ranks > 0                       ? json_string("dimensional")
                                                    : std::string("null");
  at += kCounters;
  std::string failures = "{";
  for (std::size_t cause = 0; cause < kCauses; ++cause, ++at) {
    if (cause) failures += ", ";
    failures += json_string(failure_name(static_cast<InferenceFailure>(cause))) + ": " +
                json_number(totals[at]);
  }
  failures += "}";
  LogHistogram latency = latency_, error = error_;
  std::copy(totals.begin() + at, totals.begin() + at + LogHistogram::kBins, latency.bins().begin());
  at += LogHistogram::kBins;
  std::copy(totals.begin() + at, totals.begin() + at + LogHistogram::kBins, error.bins().begin());

  std::set<long long> versions;
  std::string segments = "[";
  for (const auto& segment : version_by_step_) {
    versions.insert(segment[2]);
    if (segments.size() > 1) segments += ", ";
    segments += "[" + std::to_string(segment[0]) + ", " + std::to_string(segment[1]) + ", " +
                std::to_string(segment[2]) + "]";
  }
  segments += "]";
  std::string version_list = "[";
  for (const long long v : versions) {
    if (version_list.size() > 1) version_list += ", ";
    version_list += std::to_string(v);
  }
  version_list += "]";
  std::string errors = "[";
  for (const auto& row : errors_by_step_) {
    if (errors.size() > 1) errors += ", ";
    errors += "[" + json_number(row[0]) + ", " + json_number(row[1]) + ", " + json_number(row[2]) + "]";
  }
  errors += "]";
  std::string s = "{";
  s += "\"model\": " + json_string(options_.model);
  s += ", \"backend\": " + json_string(options_.inprocess ? "inprocess" : "worker");
  s += ", \"calls\": " + json_number(calls);
  s += ", \"waiting_calls\": " + json_number(waiting_calls);
  s += ", \"predicted_calls\": " + json_number(predicted);
  s += ", \"fallbacks\": " + json_number(fallbacks);
  s += ", \"failures\": " + failures;
  s += ", \"on_error\": " + json_string(options_.on_error == CouplingOptions::OnError::abort
                                            ? "abort" : "fallback");
  s += ", \"applied\": " + std::string(options_.apply ? "true" : "false");
  s += ", \"features\": " + features;
  s += ", \"latency_ms_p50\": " + json_number(latency.percentile(50) * 1e3);
  s += ", \"latency_ms_p99\": " + json_number(latency.percentile(99) * 1e3);
  s += ", \"predicted_share\": " +
       json_number(calls + waiting_calls > 0 ? predicted / (calls + waiting_calls) : 0.0);
  s += ", \"waiting_for\": " + (waiting_for_.empty() ? std::string("null")
                                                      : json_string(waiting_for_));
  std::string package = "null";
  if (auto* inprocess = dynamic_cast<InprocessBackend*>(backend_.get())) {
    try {
      package = inprocess->model_state(options_.model);
    } catch (const Error& error) {
      package = "{\"state\": \"unknown\", \"reason\": " + json_string(error.what()) + "}";
    }
  }
  s += ", \"package\": " + package;
  s += ", \"versions\": " + version_list;
  s += ", \"final_version\": " + (versions.empty() ? std::string("null")
                                                   : std::to_string(*versions.rbegin()));
  s += ", \"version_by_step\": " + segments;
  s += ", \"tau_w_rel_error_final\": {\"median\": " + json_number(error.percentile(50)) +
       ", \"p95\": " + json_number(error.percentile(95)) +
       ", \"points\": " + json_number(error.count()) + "}";
  s += ", \"rel_l2_error_by_step_rank0\": " + errors;
  return s + "}";
}

} // namespace nekrs_ml
