// The per-step cadence of a coupled solver (coupling.hpp); its collaborators are the classes of
// coupling_inference, sampling_window, wall_statistics, coupling_statistics and step_timing.
#include "nekrs_ml/coupling.hpp"

#include "coupling_inference.hpp"
#include "coupling_log.hpp"
#include "coupling_statistics.hpp"
#include "env.hpp"
#include "json_text.hpp"
#include "sampling_window.hpp"
#include "step_timing.hpp"
#include "wall_statistics.hpp"

#include "nekrs_ml/inprocess.hpp"
#include "nekrs_ml/keys.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

namespace nekrs_ml {
namespace {

constexpr int kInputs = 3;  // [u.t1, u.t2, u.n]
constexpr int kTargets = 2; // [tau.t1, tau.t2]

void fnv1a(std::uint64_t& hash, const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ULL;
  }
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
  case InferenceFailure::features: return "features";
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
  const std::string model_ns = model_namespace_from_env();
  options.model_ns = !model_ns.empty() ? model_ns : options.ns;
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
  std::unique_ptr<InferenceBackend> backend;
  if (options_.inferring && options_.inprocess) {
    InprocessOptions inprocess;
    inprocess.ns = options_.model_ns; // the backend reads only the model registry
    inprocess.device = options_.inprocess_device;
    inprocess.threads = options_.inprocess_threads;
    inprocess.reload_interval_s = options_.reload_interval_s;
    backend = make_inprocess_backend(*client_, inprocess);
  } else if (options_.inferring) {
    InferenceOptions inference;
    inference.ns = options_.ns;
    inference.model_ns = options_.model_ns;
    inference.rank = comm_.rank();
    inference.workers = options_.workers;
    inference.timeout_s = options_.inference_timeout_s;
    backend = std::make_unique<InferenceClient>(*client_, inference);
  }
  inference_ = std::make_unique<CouplingInference>(options_, comm_, fields_, *client_,
                                                   std::move(backend));
  window_ = std::make_unique<SamplingWindow>(options_);
  wall_ = std::make_unique<WallStatistics>();
  statistics_ = std::make_unique<FlowStatisticsRecorder>(options_, comm_, fields_, *client_);
  timing_ = std::make_unique<StepTiming>();
}

Coupling::~Coupling() = default;

void Coupling::set_inference_backend(std::unique_ptr<InferenceBackend> backend) {
  if (started_) throw ConfigError("Coupling: set the inference backend before the first step");
  if (!options_.inferring) throw ConfigError("Coupling: the workflow does not use inference");
  inference_->set_backend(std::move(backend));
}

long long Coupling::inference_calls() const { return inference_->calls(); }
long long Coupling::fallback_steps() const { return inference_->fallbacks(); }
long long Coupling::failures(InferenceFailure cause) const { return inference_->failures(cause); }
std::uint64_t Coupling::model_version() const { return inference_->version(); }
std::string Coupling::model_features() const {
  return inference_->feature_scheme_known() ? feature_scheme_name(inference_->feature_scheme())
                                            : "";
}

bool Coupling::in_sampling_window(long tstep, double time) const {
  return window_->contains(tstep, time);
}

void Coupling::log(const std::string& text) const { coupling_log(comm_, text); }

void Coupling::warn(const std::string& text) const { coupling_warn(comm_, text); }

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
  inference_->start(n_, nu_);
  window_->start();
  wall_->start(fields_.geometry(), n_, options_.train_edge_nodes,
               [this](const std::string& text) { warn(text); });
  if (options_.stats_interval > 0) statistics_->start();
  // one rank per node: co-located, each node's server has it for its own trainer ranks
  if (comm_.node_leader()) put_case();
  log(std::to_string(static_cast<long long>(total)) + " wall points, sample height " +
      json_number(options_.sample_height) + ", namespace " + options_.ns +
      (options_.model_ns != options_.ns ? ", models of namespace " + options_.model_ns : "") +
      (options_.training ? ", training" : "") + (options_.inferring ? ", inference" : ""));
}

// What the trainer needs of this solver's case to scale its samples (docs/protocol.md,
// keys::solver_case): stored before the first snapshot or inference call.
void Coupling::put_case() {
  const std::string text = "{\"kinematic_viscosity\": " + json_number(nu_) +
                           ", \"sample_height\": " + json_number(options_.sample_height) +
                           ", \"inputs\": " + std::to_string(kInputs) +
                           ", \"outputs\": " + std::to_string(kTargets) +
                           ", \"ranks\": " + std::to_string(comm_.size()) + "}";
  try {
    client_->set_string(keys::solver_case(options_.ns), text);
  } catch (const ServerError& error) {
    // a full server: the run goes on (its snapshots wait or drop the same way); the trainer
    // names the missing key
    warn("the solver's case (" + keys::solver_case(options_.ns) + ") was not stored: " +
         error.what());
  }
}

void Coupling::step(long tstep, double time, bool last_step) {
  if (finished_ || tstep <= last_tstep_) return;
  last_tstep_ = tstep;
  // the solver's time since the last call, and the coupling's own time in this one
  timing_->enter();
  struct Leave {
    StepTiming& timing;
    ~Leave() { timing.leave(); }
  } leave{*timing_};
  if (!started_) start();
  have_inputs_ = have_targets_ = false;
  if (window_->steadiness_due(tstep, time)) check_steadiness(tstep, time);
  const bool sample = options_.training && tstep > 0 && stream_->due(tstep) &&
                      window_->contains(tstep, time);
  const bool infer = options_.inferring && tstep % options_.inference_interval == 0;
  if (sample || infer) {
    fields_.sample_inputs(inputs_.data());
    have_inputs_ = true;
  }
  bool predicted = false;
  if (infer) {
    const long long before = inference_->predicted_steps();
    inference_->run(tstep, inputs_);
    predicted = inference_->predicted_steps() > before;
  }
  if (infer && wall_->known() && window_->contains(tstep, time)) {
    wall_->add_applied(inference_->stress()); // what the wall applies
  }
  if (sample) put_snapshot(tstep, time, predicted);
  if (tstep > 0 && tstep % options_.sample_interval == 0) {
    if (window_->contains(tstep, time)) wall_->add_flow_state(fields_, time);
    control(tstep, time);
  }
  if (statistics_->due(tstep, time)) {
    const bool applied = options_.inferring && inference_->calls() > 0;
    statistics_->record(tstep, time, nu_, applied ? &inference_->stress() : nullptr,
                        [this]() -> const std::vector<double>& { return resolved_stress(); },
                        *wall_);
  }
  if (last_step || tstep == end_step_) finish(tstep);
}

const std::vector<double>& Coupling::resolved_stress() {
  if (!have_targets_) fields_.wall_targets(targets_.data()); // collective
  have_targets_ = true;
  return targets_;
}

// --- training ----------------------------------------------------------------------------------

// sampleStartTolerance: one check of the steadiness test, the area-weighted mean |tau_w| over
// every rank (sampling_window.cpp decides).
void Coupling::check_steadiness(long tstep, double time) {
  const std::vector<double>& targets = resolved_stress();
  double sums[2] = {0.0, 0.0};
  for (std::size_t i = 0; i < n_; ++i) {
    const double w = wall_->weight(i);
    const double tau = std::hypot(targets[2 * i], targets[2 * i + 1]);
    if (!std::isfinite(tau)) continue;
    sums[0] += w * tau;
    sums[1] += w;
  }
  comm_.sum(sums, 2);
  const std::string opened =
      window_->add_steadiness_check(tstep, time, sums[1] > 0 ? sums[0] / sums[1] : 0.0);
  if (!opened.empty()) log(opened);
}

void Coupling::put_snapshot(long tstep, double time, bool predicted_now) {
  const std::string opened = window_->note_snapshot(tstep, time);
  if (!opened.empty()) log(opened);
  resolved_stress(); // computed once per step
  if (wall_->known()) wall_->add_resolved(targets_); // the resolved stress, all wall points
  // the rows that train: edge nodes left out unless trainingNodes = all
  const std::size_t rows = wall_->train_rows().size();
  const double* in = wall_->training_rows(inputs_, kInputs, train_inputs_);
  const double* out = wall_->training_rows(targets_, kTargets, train_targets_);
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

  // train+infer: the model's stress of this step against the resolved one (a-posteriori check)
  if (predicted_now) inference_->compare(tstep, targets_, wall_->train_rows());
}

// A snapshot the trainer never sees: the launcher tests the published model on it.
void Coupling::put_holdout() {
  if (!options_.training || n_ == 0) return;
  if (!have_inputs_) fields_.sample_inputs(inputs_.data());
  if (!have_targets_) fields_.wall_targets(targets_.data());
  have_inputs_ = have_targets_ = true;
  const int rank = comm_.rank();
  const std::size_t rows = wall_->train_rows().size(); // tested where it was trained: off the edges
  const double* in = wall_->training_rows(inputs_, kInputs, train_inputs_);
  const double* out = wall_->training_rows(targets_, kTargets, train_targets_);
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
        client_->set_string(keys::solver_inference(options_.ns), inference_->progress_json());
      }
      if (options_.training && TrainingStream::stop_requested(*client_, options_.ns)) flags[0] = 1;
    } catch (const Error& error) {
      if (control_errors_++ % 100 == 0) {
        warn("step " + std::to_string(tstep) + ": the control keys could not be read or " +
             "written (" + std::to_string(control_errors_) + " times so far): " + error.what());
      }
    }
  }
  if (options_.inferring && inference_->too_many_failures()) flags[1] = 1;
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

// --- end of the run ----------------------------------------------------------------------------

// Where each part lies in the run summary's sum over the ranks (finish()).
constexpr std::size_t kDigestAt = 3;                // after snapshots written, dropped, points
constexpr std::size_t kInferenceAt = kDigestAt + 4; // the digest in four 16-bit pieces

std::string Coupling::finish(long tstep) {
  if (finished_) return summary_;
  if (!started_) start();
  finished_ = true;
  put_holdout();

  // One sum over the ranks: snapshot counters, digest pieces, then each collaborator's part.
  std::vector<double> totals = {
      static_cast<double>(snapshots_written()),
      static_cast<double>(stream_ ? stream_->snapshots_dropped() : 0),
      static_cast<double>(n_),
  };
  for (int piece = 0; piece < 4; ++piece) {
    totals.push_back(static_cast<double>((data_digest_ >> (16 * piece)) & 0xffff));
  }
  inference_->append_totals(totals);
  wall_->append_totals(totals);
  timing_->append_totals(totals);
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
  const double calls = totals[kInferenceAt], fallbacks = totals[kInferenceAt + 2];
  if (options_.inferring && fallbacks > 0) {
    log(json_number(fallbacks) + " of " + json_number(calls) +
        " inference calls fell back to the wall law");
  }
  return summary_;
}

std::string Coupling::summary_json(const std::vector<double>& totals) const {
  std::uint64_t digest = 0;
  for (int piece = 0; piece < 4; ++piece) {
    digest |= (static_cast<std::uint64_t>(totals[kDigestAt + piece]) & 0xffff) << (16 * piece);
  }
  const std::size_t wall_at = kInferenceAt + CouplingInference::kTotals;
  const std::size_t timing_at = wall_at + wall_->totals_size();

  char hex[17];
  const auto hex_end = std::to_chars(hex, hex + 16, digest, 16).ptr;
  std::string s = "{";
  s += "\"steps\": " + std::to_string(last_tstep_);
  s += ", \"ranks\": " + std::to_string(comm_.size());
  s += ", \"kinematic_viscosity\": " + json_number(nu_);
  s += ", \"wall_points\": " + json_number(totals[2]);
  s += ", \"workflow\": " + json_string(options_.training && options_.inferring ? "train+infer"
                                         : options_.training                 ? "train"
                                                                              : "infer");
  s += ", \"ended_early\": " + (end_reason_.empty() ? std::string("null") : json_string(end_reason_));
  s += ", \"stopped_by_trainer\": " + std::string(end_reason_ == "trainer" ? "true" : "false");
  s += ", \"end_step\": " + (end_step_ >= 0 ? std::to_string(end_step_) : std::string("null"));
  s += ", \"snapshots_written\": " + json_number(totals[0]);
  s += ", \"snapshots_dropped\": " + json_number(totals[1]);
  s += ", \"data_digest\": \"" + std::string(hex, hex_end) + "\"";
  if (options_.training) s += ", \"sample_window\": " + window_->json();
  s += ", \"statistics\": " + statistics_->json();
  s += ", \"nonfinite_input_steps\": " + json_number(totals[kInferenceAt + 4]);
  s += ", \"wall_stress\": " + wall_->json(totals, wall_at, comm_.size(), options_);
  s += ", \"timing\": " + StepTiming::json(totals, timing_at, comm_.size());
  s += ", \"inference\": " + (options_.inferring ? inference_->json(totals, kInferenceAt)
                                                  : std::string("null"));
  s += "}";
  return s;
}

} // namespace nekrs_ml
