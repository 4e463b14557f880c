// The per-step policy of a coupled solver (coupling.hpp).
#include "nekrs_ml/coupling.hpp"

#include "env.hpp"

#include "nekrs_ml/inprocess.hpp"

#include "nekrs_ml/keys.hpp"
#include "nekrs_ml/wall.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <set>
#include <utility>

namespace nekrs_ml {
namespace {

constexpr std::size_t kCauses = static_cast<std::size_t>(InferenceFailure::count_);
constexpr int kInputs = 3;  // [u.t1, u.t2, u.n]
constexpr int kTargets = 2; // [tau.t1, tau.t2]

// Numbers in JSON without the locale; non-finite values become null (strict JSON).
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  const auto result = std::to_chars(text, text + sizeof text, value);
  return std::string(text, result.ptr);
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void fnv1a(std::uint64_t& hash, const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ULL;
  }
}

bool all_finite(const double* values, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) return false;
  }
  return true;
}

} // namespace

const char* failure_name(InferenceFailure cause) {
  switch (cause) {
  case InferenceFailure::timeout: return "timeout";
  case InferenceFailure::worker_unavailable: return "worker_unavailable";
  case InferenceFailure::unknown_model: return "unknown_model";
  case InferenceFailure::model_error: return "model_error";
  case InferenceFailure::bad_output: return "bad_output";
  case InferenceFailure::not_finite: return "not_finite";
  case InferenceFailure::negative_magnitude: return "negative_magnitude";
  case InferenceFailure::connection: return "connection";
  case InferenceFailure::server_error: return "server_error";
  case InferenceFailure::package_missing: return "package_missing";
  case InferenceFailure::count_: break;
  }
  return "unknown";
}

// --- options -----------------------------------------------------------------------------------

CouplingOptions CouplingOptions::from_config(const Config& config) {
  const std::string section = "nekrs_ml";
  CouplingOptions options;
  const std::string workflow = config.get_string(section, "workflow");
  if (workflow == "off") throw ConfigError(config.source() + ": workflow = off: nothing to couple");
  options.training = workflow == "train" || workflow == "train+infer";
  options.inferring = workflow == "infer" || workflow == "train+infer";
  options.infer_only = workflow == "infer";
  const std::string ns = namespace_from_env();
  options.ns = !ns.empty() ? ns : config.get_string(section, "namespace");
  options.sample_interval = static_cast<int>(config.get_int(section, "sampleInterval"));
  options.sample_start = static_cast<long>(config.get_int(section, "sampleStart"));
  options.sample_start_time = config.get_double(section, "sampleStartTime");
  options.sample_start_tolerance = config.get_double(section, "sampleStartTolerance");
  options.sample_start_checks = static_cast<int>(config.get_int(section, "sampleStartChecks"));
  options.inference_interval = static_cast<int>(config.get_int(section, "inferenceInterval"));
  options.model = config.get_string(section, "modelName");
  options.sample_height = config.get_double(section, "sampleHeight");
  options.float64 = config.get_string(section, "snapshotDtype") == "float64";
  options.apply = config.get_bool(section, "applyPredictions");
  options.on_error = config.get_string(section, "onInferenceError") == "abort" ? OnError::abort
                                                                               : OnError::fallback;
  options.max_failures = static_cast<int>(config.get_int(section, "maxInferenceFailures"));
  options.timeout_s = config.get_double(section, "timeout");
  options.inference_timeout_s = config.get_double(section, "inferenceTimeout");
  options.workers = static_cast<int>(config.get_int(section, "workers"));
  options.inprocess = config.get_string(section, "inferenceBackend") == "inprocess";
  options.inprocess_device = config.get_string(section, "inprocessDevice");
  options.inprocess_threads = static_cast<int>(config.get_int(section, "inprocessThreads"));
  options.reload_interval_s = config.get_double(section, "reloadInterval");
  options.train_edge_nodes = config.get_string(section, "trainingNodes") == "all";
  options.stats_interval = static_cast<int>(config.get_int(section, "statsInterval"));
  options.stats_start = static_cast<long>(config.get_int(section, "statsStart"));
  options.stats_start_time = config.get_double(section, "statsStartTime");
  return options;
}

// --- histogram ---------------------------------------------------------------------------------

LogHistogram::LogHistogram(double low, double high)
    : log_low_(std::log10(low)), log_high_(std::log10(high)), bins_(kBins, 0.0) {}

void LogHistogram::add(double value) {
  if (std::isnan(value)) return;
  const double position = value > 0 ? (std::log10(value) - log_low_) / (log_high_ - log_low_) : 0;
  const int bin = std::clamp(static_cast<int>(position * kBins), 0, kBins - 1);
  bins_[static_cast<std::size_t>(bin)] += 1.0;
}

double LogHistogram::count() const {
  double total = 0;
  for (const double c : bins_) total += c;
  return total;
}

double LogHistogram::percentile(double p) const {
  const double total = count();
  if (total <= 0) return std::nan("");
  const double wanted = std::clamp(p, 0.0, 100.0) / 100.0 * total;
  double seen = 0;
  for (int bin = 0; bin < kBins; ++bin) {
    seen += bins_[static_cast<std::size_t>(bin)];
    if (seen >= wanted && bins_[static_cast<std::size_t>(bin)] > 0) {
      const double center = log_low_ + (bin + 0.5) * (log_high_ - log_low_) / kBins;
      return std::pow(10.0, center);
    }
  }
  return std::pow(10.0, log_high_);
}

// --- coupling ----------------------------------------------------------------------------------

Coupling::Coupling(const Config& config, Collective& comm, WallFields& fields)
    : Coupling(config, comm, fields, nullptr) {}

Coupling::Coupling(const Config& config, Collective& comm, WallFields& fields,
                   std::unique_ptr<Client> client)
    : options_(CouplingOptions::from_config(config)), comm_(comm), fields_(fields),
      client_(std::move(client)) {
  if (!client_) client_ = std::make_unique<Client>(Client::options_from_env());
  client_->set_timeout(options_.timeout_s);
  if (options_.training) {
    StreamOptions stream = StreamOptions::from_config(config, comm_.rank());
    stream.ns = options_.ns;
    stream_ = std::make_unique<TrainingStream>(*client_, stream);
  }
  if (options_.inferring && options_.inprocess) {
    InprocessOptions inprocess;
    inprocess.ns = options_.ns;
    inprocess.device = options_.inprocess_device;
    inprocess.threads = options_.inprocess_threads;
    inprocess.reload_interval_s = options_.reload_interval_s;
    inference_ = make_inprocess_backend(*client_, inprocess);
  } else if (options_.inferring) {
    InferenceOptions inference;
    inference.ns = options_.ns;
    inference.rank = comm_.rank();
    inference.workers = options_.workers;
    inference.timeout_s = options_.inference_timeout_s;
    inference_ = std::make_unique<InferenceClient>(*client_, inference);
  }
}

Coupling::~Coupling() = default;

void Coupling::set_inference_backend(std::unique_ptr<InferenceBackend> backend) {
  if (started_) throw ConfigError("Coupling: set the inference backend before the first step");
  if (!options_.inferring) throw ConfigError("Coupling: the workflow does not use inference");
  inference_ = std::move(backend);
}

void Coupling::note_waiting(long tstep, const std::string& reason) {
  constexpr double kWaitingLogSeconds = 30.0;
  waiting_for_ = reason;
  const double now = std::chrono::duration<double>(
                         std::chrono::steady_clock::now().time_since_epoch()).count();
  if (waiting_logged_ < 0 || now - waiting_logged_ >= kWaitingLogSeconds) {
    waiting_logged_ = now;
    log("step " + std::to_string(tstep) + ": no model yet, the wall law meanwhile: " + reason);
  }
}

std::string Coupling::inference_progress_json() const {
  return "{\"version\": " + std::to_string(version_) +
         ", \"calls\": " + std::to_string(calls_ + waiting_calls_) +
         ", \"predicted\": " + std::to_string(predicted_steps_) +
         ", \"fallbacks\": " + std::to_string(fallbacks_) +
         ", \"waiting_for\": " + (waiting_for_.empty() ? std::string("null")
                                                        : json_string(waiting_for_)) + "}";
}

void Coupling::log(const std::string& text) const {
  if (comm_.rank() == 0) std::cout << "nekrs_ml: " << text << std::endl;
}

void Coupling::warn(const std::string& text) const {
  std::cerr << "nekrs_ml: rank " << comm_.rank() << ": warning: " << text << std::endl;
}

void Coupling::start() {
  started_ = true;
  n_ = fields_.wall_points();
  double total = static_cast<double>(n_);
  comm_.sum(&total, 1);
  if (total == 0) throw ConfigError("no wall points: check wallBoundaryIds");
  nu_ = fields_.kinematic_viscosity();
  if (!(nu_ > 0)) throw ConfigError("the solver's kinematic viscosity must be positive");
  inputs_.resize(kInputs * n_);
  targets_.resize(kTargets * n_);
  stress_.assign(kTargets * n_, 0.0);
  model_inputs_.resize(kInputs * n_);
  predictions_.resize(kTargets * n_);
  steady_ = !(options_.training && options_.sample_start_tolerance > 0);
  geometry_ = fields_.geometry();
  const bool geometry_ok = geometry_.known && geometry_.weights.size() == n_ &&
                           geometry_.tangents1.size() == 3 * n_ &&
                           geometry_.tangents2.size() == 3 * n_ &&
                           geometry_.on_element_edge.size() == n_;
  if (!geometry_ok) geometry_ = {};
  select_training_rows();
  if (options_.stats_interval > 0) start_statistics();
  log(std::to_string(static_cast<long long>(total)) + " wall points, sample height " +
      json_number(options_.sample_height) + ", namespace " + options_.ns +
      (options_.training ? ", training" : "") + (options_.inferring ? ", inference" : ""));
}

void Coupling::step(long tstep, double time, bool last_step) {
  if (finished_ || tstep <= last_tstep_) return;
  last_tstep_ = tstep;
  // the solver's time since the last call, and the coupling's own time in this one
  const auto entered = std::chrono::steady_clock::now();
  if (timed_steps_++ > 0) solver_seconds_ += std::chrono::duration<double>(entered - left_).count();
  struct Timer {
    Coupling& self;
    std::chrono::steady_clock::time_point entered;
    ~Timer() {
      self.left_ = std::chrono::steady_clock::now();
      self.coupling_seconds_ += std::chrono::duration<double>(self.left_ - entered).count();
      ++self.timed_calls_;
    }
  } timer{*this, entered};
  if (!started_) start();
  have_inputs_ = have_targets_ = false;
  if (!steady_ && tstep > 0 && tstep % options_.sample_interval == 0 &&
      tstep >= options_.sample_start && time >= options_.sample_start_time) {
    check_steadiness(tstep, time);
  }
  const bool sample = options_.training && tstep > 0 && stream_->due(tstep) &&
                      in_sampling_window(tstep, time);
  const bool infer = options_.inferring && tstep % options_.inference_interval == 0;
  if (sample || infer) {
    fields_.sample_inputs(inputs_.data());
    have_inputs_ = true;
  }
  bool predicted = false;
  if (infer) {
    const long long before = predicted_steps_;
    run_inference(tstep);
    predicted = predicted_steps_ > before;
  }
  if (infer && geometry_.known && in_sampling_window(tstep, time)) {
    add_wall_stress(stress_, false, stress_sums_); // what the wall applies
    ++applied_steps_;
  }
  if (sample) put_snapshot(tstep, time, predicted);
  if (tstep > 0 && tstep % options_.sample_interval == 0) {
    if (in_sampling_window(tstep, time)) add_flow_state(time);
    control(tstep, time);
  }
  if (statistics_due(tstep, time)) record_statistics(tstep, time);
  if (last_step || tstep == end_step_) finish(tstep);
}

// --- inference ---------------------------------------------------------------------------------

void Coupling::run_inference(long tstep) {
  if (n_ == 0) { // nothing to predict on this rank; it still takes part in collectives
    ++calls_;
    return;
  }
  for (std::size_t i = 0; i < inputs_.size(); ++i) model_inputs_[i] = static_cast<float>(inputs_[i]);
  InferenceFailure cause = InferenceFailure::timeout;
  std::string detail;
  bool ok = false;
  try {
    const InferenceResult result = inference_->run(
        options_.model, TensorHeader{DType::float32, {n_, static_cast<std::uint64_t>(kInputs)}},
        model_inputs_.data(), predictions_.data(), predictions_.size() * sizeof(float));
    latency_.add(result.seconds);
    if (check_predictions(result, cause)) {
      if (result.version != version_) {
        if (version_ != 0 || comm_.rank() == 0) {
          log("step " + std::to_string(tstep) + ": predictions of " + options_.model +
              " version " + std::to_string(result.version));
        }
        version_ = result.version;
        std::fill(error_.bins().begin(), error_.bins().end(), 0.0); // error of this version only
      }
      if (version_by_step_.empty() || version_by_step_.back()[2] != static_cast<long long>(version_)) {
        version_by_step_.push_back({tstep, tstep, static_cast<long long>(version_)});
      } else {
        version_by_step_.back()[1] = tstep;
      }
      predictions_to_stress(result.header.shape.size() == 2 ? result.header.shape[1] : 0);
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
  if (ok) {
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

bool Coupling::check_predictions(const InferenceResult& result, InferenceFailure& cause) {
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

// Predictions -> stress_: a vector model gives [tau.t1, tau.t2]; a magnitude model |tau|, applied
// along the tangential velocity at the sample point.
void Coupling::predictions_to_stress(std::size_t columns) {
  for (std::size_t i = 0; i < n_; ++i) {
    if (columns == 2) {
      stress_[2 * i] = predictions_[2 * i];
      stress_[2 * i + 1] = predictions_[2 * i + 1];
    } else {
      const double u1 = inputs_[3 * i], u2 = inputs_[3 * i + 1];
      const double speed = std::hypot(u1, u2);
      stress_[2 * i] = speed > 0 ? predictions_[i] * u1 / speed : 0.0;
      stress_[2 * i + 1] = speed > 0 ? predictions_[i] * u2 / speed : 0.0;
    }
  }
}

void Coupling::fallback_stress() {
  wall_law_stress(inputs_.data(), n_, options_.sample_height, nu_, stress_.data());
}

void Coupling::apply_stress(long tstep) {
  if (!all_finite(stress_.data(), stress_.size())) {
    // only a non-finite solver field gets here (the wall law of a NaN velocity)
    for (double& value : stress_) {
      if (!std::isfinite(value)) value = 0.0;
    }
    if (nonfinite_inputs_++ == 0) {
      warn("step " + std::to_string(tstep) + ": the sampled velocity is not finite; zero wall "
           "stress applied at those points");
    }
  }
  fields_.apply_wall_stress(stress_.data());
}

void Coupling::record_failure(long tstep, InferenceFailure cause, const std::string& detail) {
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
    warn("step " + std::to_string(tstep) + ": inference failed (" + failure_name(cause) + ", " +
         std::to_string(failures_[index]) + " so far): " + detail +
         "; this step uses the fallback wall law");
  }
}

// --- training ----------------------------------------------------------------------------------

bool Coupling::in_sampling_window(long tstep, double time) const {
  return steady_ && tstep >= options_.sample_start && time >= options_.sample_start_time;
}

// sampleStartTolerance: the window opens once the wall shear stress is steady, i.e. the means
// of the two halves of the last sampleStartChecks control checks of the area-weighted mean
// |tau_w| (over every rank) differ by at most the tolerance, relative to the newer half.
void Coupling::check_steadiness(long tstep, double time) {
  fields_.wall_targets(targets_.data()); // collective
  have_targets_ = true;
  double sums[2] = {0.0, 0.0};
  for (std::size_t i = 0; i < n_; ++i) {
    const double w = geometry_.known ? geometry_.weights[i] : 1.0;
    const double tau = std::hypot(targets_[2 * i], targets_[2 * i + 1]);
    if (!std::isfinite(tau)) continue;
    sums[0] += w * tau;
    sums[1] += w;
  }
  comm_.sum(sums, 2);
  steadiness_history_.push_back(sums[1] > 0 ? sums[0] / sums[1] : 0.0);
  const std::size_t checks = static_cast<std::size_t>(options_.sample_start_checks);
  if (steadiness_history_.size() > checks) steadiness_history_.erase(steadiness_history_.begin());
  if (steadiness_history_.size() < checks) return;
  const std::size_t half = checks / 2;
  double older = 0.0, newer = 0.0;
  for (std::size_t i = 0; i < half; ++i) older += steadiness_history_[i];
  for (std::size_t i = checks - half; i < checks; ++i) newer += steadiness_history_[i];
  older /= static_cast<double>(half);
  newer /= static_cast<double>(half);
  last_change_ = newer != 0 ? std::abs(newer - older) / std::abs(newer) : -1.0;
  if (last_change_ < 0 || last_change_ > options_.sample_start_tolerance) return;
  steady_ = true;
  steady_step_ = tstep;
  steady_time_ = time;
  log("step " + std::to_string(tstep) + " (time " + json_number(time) + "): the wall shear " +
      "stress is steady (mean " + json_number(newer) + ", change " + json_number(last_change_) +
      " over the last " + std::to_string(checks) + " checks, sampleStartTolerance = " +
      json_number(options_.sample_start_tolerance) + "): the sampling window opens");
}

std::string Coupling::steadiness_json() const {
  if (!(options_.training && options_.sample_start_tolerance > 0)) return "null";
  std::string s = "{\"tolerance\": " + json_number(options_.sample_start_tolerance);
  s += ", \"checks\": " + std::to_string(options_.sample_start_checks);
  s += ", \"opened_step\": " + (steady_step_ >= 0 ? std::to_string(steady_step_) : std::string("null"));
  s += ", \"opened_time\": " + (steady_step_ >= 0 ? json_number(steady_time_) : std::string("null"));
  s += ", \"last_relative_change\": " + (last_change_ >= 0 ? json_number(last_change_) : std::string("null"));
  return s + "}";
}

void Coupling::put_snapshot(long tstep, double time, bool predicted_now) {
  if (!window_open_) {
    window_open_ = true;
    window_first_step_ = tstep;
    window_first_time_ = time;
    if (options_.sample_start > 0 || options_.sample_start_time > 0) {
      log("step " + std::to_string(tstep) + " (time " + json_number(time) + "): the sampling "
          "window opens (sampleStart = " + std::to_string(options_.sample_start) +
          ", sampleStartTime = " + json_number(options_.sample_start_time) + ")");
    }
  }
  window_last_step_ = tstep;
  window_last_time_ = time;
  if (!have_targets_) fields_.wall_targets(targets_.data()); // computed once per step
  have_targets_ = true;
  if (geometry_.known) {
    add_wall_stress(targets_, true, stress_sums_); // the resolved stress, all wall points
    ++resolved_steps_;
  }
  // the rows that train: edge nodes left out unless trainingNodes = all
  const std::size_t rows = train_rows_.size();
  const double* in = training_rows(inputs_, kInputs, train_inputs_);
  const double* out = training_rows(targets_, kTargets, train_targets_);
  PutResult result;
  if (options_.float64) {
    fnv1a(data_digest_, in, rows * kInputs * sizeof(double));
    fnv1a(data_digest_, out, rows * kTargets * sizeof(double));
    result = stream_->put(tstep, time, rows, kInputs, in, kTargets, out);
  } else {
    inputs32_.assign(in, in + rows * kInputs);
    targets32_.assign(out, out + rows * kTargets);
    fnv1a(data_digest_, inputs32_.data(), inputs32_.size() * sizeof(float));
    fnv1a(data_digest_, targets32_.data(), targets32_.size() * sizeof(float));
    result = stream_->put(tstep, time, rows, kInputs, inputs32_.data(), kTargets, targets32_.data());
  }
  if (!result.warning.empty() && ++warnings_ <= 3) warn(result.warning);

  if (!predicted_now) return;
  // train+infer: the model's stress of this step against the resolved one (a-posteriori check)
  const std::vector<double>& predicted = options_.apply ? stress_ : model_stress_;
  double sums[2] = {0.0, 0.0};
  for (const std::size_t i : train_rows_) { // the targets of edge nodes are biased
    const double d1 = predicted[2 * i] - targets_[2 * i];
    const double d2 = predicted[2 * i + 1] - targets_[2 * i + 1];
    const double t = std::hypot(targets_[2 * i], targets_[2 * i + 1]);
    sums[0] += d1 * d1 + d2 * d2;
    sums[1] += t * t;
    if (t > 0) error_.add(std::hypot(d1, d2) / t);
  }
  if (comm_.rank() == 0) {
    errors_by_step_.push_back({static_cast<double>(tstep), static_cast<double>(version_),
                               sums[1] > 0 ? std::sqrt(sums[0] / sums[1]) : std::nan("")});
  }
}

// A snapshot the trainer never sees: the launcher tests the published model on it.
void Coupling::put_holdout() {
  if (!options_.training || n_ == 0) return;
  if (!have_inputs_) fields_.sample_inputs(inputs_.data());
  if (!have_targets_) fields_.wall_targets(targets_.data());
  have_inputs_ = have_targets_ = true;
  const int rank = comm_.rank();
  const std::size_t rows = train_rows_.size(); // tested where it was trained: off the edges
  const double* in = training_rows(inputs_, kInputs, train_inputs_);
  const double* out = training_rows(targets_, kTargets, train_targets_);
  try {
    if (options_.float64) {
      client_->put_tensors({{keys::holdout_inputs(options_.ns, rank),
                             TensorHeader{DType::float64, {rows, 3}}, in},
                            {keys::holdout_targets(options_.ns, rank),
                             TensorHeader{DType::float64, {rows, 2}}, out}});
    } else {
      inputs32_.assign(in, in + rows * kInputs);
      targets32_.assign(out, out + rows * kTargets);
      client_->put_tensors({{keys::holdout_inputs(options_.ns, rank),
                             TensorHeader{DType::float32, {rows, 3}}, inputs32_.data()},
                            {keys::holdout_targets(options_.ns, rank),
                             TensorHeader{DType::float32, {rows, 2}}, targets32_.data()}});
    }
  } catch (const ServerError& error) {
    warn(std::string("the held-out snapshot was not stored: ") + error.what());
  }
}

// --- control -----------------------------------------------------------------------------------

void Coupling::control(long tstep, double time) {
  // [stop requested, ranks past maxInferenceFailures]
  double flags[2] = {0.0, 0.0};
  if (comm_.rank() == 0) {
    // The progress key is informative and the stop request is read again next time: a full,
    // paused or briefly unreachable server delays them but does not end the run.
    try {
      client_->set_string(keys::solver_step(options_.ns), std::to_string(tstep));
      client_->set_string(keys::solver_time(options_.ns), json_number(time));
      if (options_.inferring) {
        client_->set_string(keys::solver_inference(options_.ns), inference_progress_json());
      }
      if (options_.training && TrainingStream::stop_requested(*client_, options_.ns)) flags[0] = 1;
    } catch (const Error& error) {
      if (control_errors_++ % 100 == 0) {
        warn("step " + std::to_string(tstep) + ": the control keys could not be read or " +
             "written (" + std::to_string(control_errors_) + " times so far): " + error.what());
      }
    }
  }
  if (options_.inferring && consecutive_failures_ >= options_.max_failures) flags[1] = 1;
  comm_.sum(flags, 2);
  if (end_step_ >= 0 || (flags[0] == 0 && flags[1] == 0)) return;
  end_step_ = tstep + 1;
  if (flags[1] > 0) {
    end_reason_ = "inference_failures";
    log("inference failed " + std::to_string(options_.max_failures) +
        " times in a row on " + json_number(flags[1]) + " rank(s) (maxInferenceFailures): step " +
        std::to_string(end_step_) + " is the last one");
  } else {
    end_reason_ = "trainer";
    log("the trainer asked to stop: step " + std::to_string(end_step_) + " is the last one");
  }
  fields_.end_run_at(end_step_);
}

// --- flow statistics -------------------------------------------------------------------------

bool Coupling::statistics_due(long tstep, double time) const {
  return options_.stats_interval > 0 && tstep > 0 && tstep % options_.stats_interval == 0 &&
         tstep >= options_.stats_start && time >= options_.stats_start_time;
}

void Coupling::start_statistics() {
  WallFields::VolumeNodes nodes = fields_.volume_nodes(); // collective
  if (nodes.weights.size() != nodes.y.size()) {
    throw Error("the solver gave " + std::to_string(nodes.y.size()) + " node coordinates and " +
                std::to_string(nodes.weights.size()) + " weights for the flow statistics");
  }
  profile_ = ProfileBinning(comm_, nodes.y); // collective
  if (profile_.empty()) {
    log("no velocity profiles (" + profile_.why_empty() + "); the flow statistics carry the " +
        "wall shear stress only");
    return;
  }
  node_weights_ = std::move(nodes.weights);
  node_velocity_.resize(3 * profile_.nodes());
  log("flow statistics every " + std::to_string(options_.stats_interval) + " steps on " +
      std::to_string(profile_.levels().size()) + " planes y = const");
}

// Adds sum w tau_x and sum w of a wall stress [n_][2] (wall frame) to sums[0], sums[1].
void Coupling::add_streamwise_stress(const std::vector<double>& tau, double* sums) const {
  if (!geometry_.known) return;
  std::vector<double> groups(16, 0.0);
  add_wall_stress(tau, false, groups); // group 0: the stress (x, y, z) and the area
  sums[0] += groups[0];
  sums[1] += groups[3];
}

// One record: the velocity moments per plane and the area-weighted wall shear stress along x
// (applied, where the coupling sets the BC, and resolved), summed over the ranks; rank 0
// pushes it (docs/protocol.md, "Flow statistics"). A failed push loses that record only.
void Coupling::record_statistics(long tstep, double time) {
  const std::size_t levels = profile_.levels().size();
  std::vector<double> sums(levels * kProfileMoments + 4, 0.0);
  if (levels > 0) {
    fields_.volume_velocity(node_velocity_.data()); // collective
    const std::size_t n = profile_.nodes();
    const double* u = node_velocity_.data();
    profile_.add(node_weights_.data(), u, u + n, u + 2 * n, sums.data());
  }
  double* wall = sums.data() + levels * kProfileMoments;
  if (options_.inferring && calls_ > 0) add_streamwise_stress(stress_, wall);
  if (!have_targets_) fields_.wall_targets(targets_.data()); // collective
  have_targets_ = true;
  add_streamwise_stress(targets_, wall + 2);
  comm_.sum(sums.data(), sums.size());
  if (stats_first_step_ < 0) stats_first_step_ = tstep;
  stats_last_step_ = tstep;
  ++stats_records_;
  if (comm_.rank() != 0) return;

  std::string record = "{\"step\": " + std::to_string(tstep) + ", \"time\": " + json_number(time);
  record += ", \"kinematic_viscosity\": " + json_number(nu_); // + units without the summary
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
    const auto replies = client_->pipeline({Command::of(key, {"RPUSH", key, record}),
                                            Command::of(key, {"LTRIM", key, keep_from, "-1"})});
    for (const auto& reply : replies) {
      if (reply.is_error()) throw ServerError(key + ": " + reply.text);
    }
  } catch (const Error& error) {
    if (stats_errors_++ % 100 == 0) {
      warn("step " + std::to_string(tstep) + ": a flow-statistics record was lost (" +
           std::to_string(stats_errors_) + " so far): " + error.what());
    }
  }
}

std::string Coupling::statistics_json() const {
  if (options_.stats_interval <= 0) return "null";
  std::string s = "{\"interval\": " + std::to_string(options_.stats_interval);
  s += ", \"start\": " + std::to_string(options_.stats_start);
  s += ", \"start_time\": " + json_number(options_.stats_start_time);
  s += ", \"planes\": " + std::to_string(profile_.levels().size());
  s += ", \"no_profile_because\": " +
       (profile_.empty() ? json_string(profile_.why_empty()) : std::string("null"));
  s += ", \"records\": " + std::to_string(stats_records_);
  s += ", \"records_lost\": " + std::to_string(stats_errors_);
  s += ", \"first_step\": " + (stats_first_step_ >= 0 ? std::to_string(stats_first_step_) : "null");
  s += ", \"last_step\": " + (stats_last_step_ >= 0 ? std::to_string(stats_last_step_) : "null");
  return s + "}";
}

// --- end of the run ----------------------------------------------------------------------------

std::string Coupling::finish(long tstep) {
  if (finished_) return summary_;
  if (!started_) start();
  finished_ = true;
  put_holdout();

  // One sum over the ranks: fixed counters, failures per cause, both histograms, digest pieces.
  std::vector<double> totals = {
      static_cast<double>(snapshots_written()),
      static_cast<double>(stream_ ? stream_->snapshots_dropped() : 0),
      static_cast<double>(calls_),
      static_cast<double>(waiting_calls_),
      static_cast<double>(fallbacks_),
      static_cast<double>(predicted_steps_),
      static_cast<double>(n_),
      static_cast<double>(nonfinite_inputs_),
  };
  for (const long long count : failures_) totals.push_back(static_cast<double>(count));
  for (int piece = 0; piece < 4; ++piece) {
    totals.push_back(static_cast<double>((data_digest_ >> (16 * piece)) & 0xffff));
  }
  totals.insert(totals.end(), latency_.bins().begin(), latency_.bins().end());
  totals.insert(totals.end(), error_.bins().begin(), error_.bins().end());
  totals.push_back(static_cast<double>(train_rows_.size()));
  totals.push_back(geometry_.known ? 1.0 : 0.0); // ranks that know their geometry
  totals.push_back(std::accumulate(geometry_.weights.begin(), geometry_.weights.end(), 0.0));
  totals.insert(totals.end(), stress_sums_.begin(), stress_sums_.end());
  totals.push_back(solver_seconds_);
  totals.push_back(coupling_seconds_);
  totals.push_back(static_cast<double>(timed_steps_));
  totals.push_back(static_cast<double>(timed_calls_)); // the calls that ended before this sum
  comm_.sum(totals.data(), totals.size());
  comm_.barrier(); // every rank's last snapshot is announced before the solver is marked done

  if (comm_.rank() == 0) {
    summary_ = summary_json(totals);
    try {
      client_->set_string(keys::solver_summary(options_.ns), summary_);
    } catch (const Error& error) {
      warn(std::string("the run summary was not stored: ") + error.what());
    }
  }
  if (comm_.node_leader()) {
    try {
      client_->set_string(keys::solver_step(options_.ns), std::to_string(tstep));
    } catch (const ServerError&) {
    }
    TrainingStream::mark_done(*client_, options_.ns);
  }
  if (options_.training) {
    log("done at step " + std::to_string(tstep) + ": " + json_number(totals[0]) +
        " snapshots written, " + json_number(totals[1]) + " dropped");
  } else {
    log("done at step " + std::to_string(tstep));
  }
  if (options_.inferring && totals[4] > 0) {
    log(json_number(totals[4]) + " of " + json_number(totals[2]) +
        " inference calls fell back to the wall law");
  }
  return summary_;
}

// --- wall statistics ---------------------------------------------------------------------------

void Coupling::select_training_rows() {
  train_rows_.clear();
  const auto& edge = geometry_.on_element_edge;
  for (std::size_t i = 0; i < n_; ++i) {
    if (options_.train_edge_nodes || edge.empty() || !edge[i]) train_rows_.push_back(i);
  }
  if (train_rows_.empty() && n_ > 0) { // e.g. N = 1: every node is an edge node
    warn("every wall point of this rank lies on an element edge: all of them train "
         "(trainingNodes = interior needs polynomial order N >= 2)");
    for (std::size_t i = 0; i < n_; ++i) train_rows_.push_back(i);
  }
}

// The training rows of a [n_][columns] array: the array itself when every row trains.
const double* Coupling::training_rows(const std::vector<double>& values, std::size_t columns,
                                      std::vector<double>& scratch) const {
  if (train_rows_.size() == n_) return values.data();
  scratch.resize(train_rows_.size() * columns);
  for (std::size_t r = 0; r < train_rows_.size(); ++r) {
    std::copy_n(values.data() + train_rows_[r] * columns, columns, scratch.data() + r * columns);
  }
  return scratch.data();
}

// Adds the area-weighted stress [n_][2] (wall frame) in the global frame to group 0 (applied)
// or, with interior_edge_split, to groups 1 (all), 2 (off edges) and 3 (edges).
void Coupling::add_wall_stress(const std::vector<double>& tau, bool interior_edge_split,
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

void Coupling::add_flow_state(double time) {
  if (!balance_known_) return;
  WallFields::FlowState state;
  if (!fields_.flow_state(state) || !std::isfinite(state.driving_gradient) ||
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

// The momentum balance of the mean flow along x: the wall shear stress that the driving
// gradient and the change of the bulk velocity imply, (dp/dx - dU_b/dt) V / A, beside the
// area-weighted stress measured at the wall.
std::string Coupling::momentum_json(double area, double tau_x) const {
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
std::string Coupling::wall_stress_json(const std::vector<double>& totals, std::size_t at) const {
  const double trained = totals[at], ranks_with_geometry = totals[at + 1], area = totals[at + 2];
  const double* sums = &totals[at + 3];
  if (ranks_with_geometry < comm_.size()) return "null";
  auto group = [&](int g, long long steps) {
    const double* s = sums + 4 * g;
    if (steps == 0 || !(s[3] > 0)) return std::string("null");
    return "{\"mean\": [" + json_number(s[0] / s[3]) + ", " + json_number(s[1] / s[3]) + ", " +
           json_number(s[2] / s[3]) + "], \"magnitude\": " +
           json_number(std::sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2]) / s[3]) +
           ", \"steps\": " + std::to_string(steps) + "}";
  };
  std::string s = "{\"area\": " + json_number(area);
  if (options_.training) {
    s += ", \"training_nodes\": " + json_string(options_.train_edge_nodes ? "all" : "interior");
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

// The sampling window: as configured, and the steps and times of the snapshots streamed.
std::string Coupling::window_json() const {
  const bool any = window_first_step_ >= 0;
  std::string s = "{\"sample_start\": " + std::to_string(options_.sample_start);
  s += ", \"sample_start_time\": " + json_number(options_.sample_start_time);
  s += ", \"sample_interval\": " + std::to_string(options_.sample_interval);
  s += ", \"steady_start\": " + steadiness_json();
  s += ", \"first_step\": " + (any ? std::to_string(window_first_step_) : std::string("null"));
  s += ", \"last_step\": " + (any ? std::to_string(window_last_step_) : std::string("null"));
  s += ", \"first_time\": " + (any ? json_number(window_first_time_) : std::string("null"));
  s += ", \"last_time\": " + (any ? json_number(window_last_time_) : std::string("null"));
  return s + "}";
}

// "timing": per step and rank, the solver's own time (between two calls) and the coupling's
// (inside step(): sampling, snapshots, inference, statistics, control), and the coupling's share.
std::string Coupling::timing_json(const std::vector<double>& totals, std::size_t at) const {
  const double solver = totals[at], coupling = totals[at + 1], steps = totals[at + 2];
  const double calls = totals[at + 3];
  if (steps <= comm_.size() || calls <= 0) return "null"; // no solver time between calls
  const double intervals = steps - comm_.size(); // the first call of each rank has none
  const double per_step = solver / intervals, coupling_per_step = coupling / calls;
  std::string s = "{\"steps\": " + json_number(steps / comm_.size());
  s += ", \"solver_seconds_per_step\": " + json_number(per_step);
  s += ", \"coupling_seconds_per_step\": " + json_number(coupling_per_step);
  s += ", \"coupling_fraction\": " + json_number(coupling_per_step / (per_step + coupling_per_step));
  return s + "}";
}

std::string Coupling::summary_json(const std::vector<double>& totals) const {
  std::size_t at = 8;
  std::string failures = "{";
  for (std::size_t cause = 0; cause < kCauses; ++cause, ++at) {
    if (cause) failures += ", ";
    failures += json_string(failure_name(static_cast<InferenceFailure>(cause))) + ": " +
                json_number(totals[at]);
  }
  failures += "}";
  std::uint64_t digest = 0;
  for (int piece = 0; piece < 4; ++piece, ++at) {
    digest |= (static_cast<std::uint64_t>(totals[at]) & 0xffff) << (16 * piece);
  }
  LogHistogram latency = latency_, error = error_;
  std::copy(totals.begin() + at, totals.begin() + at + LogHistogram::kBins, latency.bins().begin());
  at += LogHistogram::kBins;
  std::copy(totals.begin() + at, totals.begin() + at + LogHistogram::kBins, error.bins().begin());
  at += LogHistogram::kBins;

  char hex[17];
  const auto hex_end = std::to_chars(hex, hex + 16, digest, 16).ptr;
  std::string s = "{";
  s += "\"steps\": " + std::to_string(last_tstep_);
  s += ", \"ranks\": " + std::to_string(comm_.size());
  s += ", \"kinematic_viscosity\": " + json_number(nu_);
  s += ", \"wall_points\": " + json_number(totals[6]);
  s += ", \"workflow\": " + json_string(options_.training && options_.inferring ? "train+infer"
                                         : options_.training                 ? "train"
                                                                              : "infer");
  s += ", \"ended_early\": " + (end_reason_.empty() ? std::string("null") : json_string(end_reason_));
  s += ", \"stopped_by_trainer\": " + std::string(end_reason_ == "trainer" ? "true" : "false");
  s += ", \"end_step\": " + (end_step_ >= 0 ? std::to_string(end_step_) : std::string("null"));
  s += ", \"snapshots_written\": " + json_number(totals[0]);
  s += ", \"snapshots_dropped\": " + json_number(totals[1]);
  s += ", \"data_digest\": \"" + std::string(hex, hex_end) + "\"";
  if (options_.training) s += ", \"sample_window\": " + window_json();
  s += ", \"statistics\": " + statistics_json();
  s += ", \"nonfinite_input_steps\": " + json_number(totals[7]);
  s += ", \"wall_stress\": " + wall_stress_json(totals, at);
  s += ", \"timing\": " + timing_json(totals, at + 3 + stress_sums_.size());
  if (options_.inferring) {
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
    s += ", \"inference\": {";
    s += "\"model\": " + json_string(options_.model);
    s += ", \"backend\": " + json_string(options_.inprocess ? "inprocess" : "worker");
    s += ", \"calls\": " + json_number(totals[2]);
    s += ", \"waiting_calls\": " + json_number(totals[3]);
    s += ", \"predicted_calls\": " + json_number(totals[5]);
    s += ", \"fallbacks\": " + json_number(totals[4]);
    s += ", \"failures\": " + failures;
    s += ", \"on_error\": " + json_string(options_.on_error == CouplingOptions::OnError::abort
                                              ? "abort" : "fallback");
    s += ", \"applied\": " + std::string(options_.apply ? "true" : "false");
    s += ", \"latency_ms_p50\": " + json_number(latency.percentile(50) * 1e3);
    s += ", \"latency_ms_p99\": " + json_number(latency.percentile(99) * 1e3);
    s += ", \"predicted_share\": " +
         json_number(totals[2] + totals[3] > 0 ? totals[5] / (totals[2] + totals[3]) : 0.0);
    s += ", \"waiting_for\": " + (waiting_for_.empty() ? std::string("null")
                                                        : json_string(waiting_for_));
    std::string package = "null";
    if (auto* inprocess = dynamic_cast<InprocessBackend*>(inference_.get())) {
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
    s += "}";
  } else {
    s += ", \"inference\": null";
  }
  s += "}";
  return s;
}

} // namespace nekrs_ml
