// nekrs_ml::Coupling — the per-step policy of a solver coupled to nekrs_ml. Every solver drives
// the same object: NekRS through the adapter (udf/nekrs/plugin.hpp), the stand-in solver through
// nekrs_ml._core. The solver supplies two small interfaces — its collective operations and its
// wall fields — and calls step() once per time step. The coupling keeps the cadence and hands
// the rest to its collaborators (udf/src):
//
//  - the cadence (here): a snapshot every sampleInterval steps inside the sampling window, an
//    inference call every inferenceInterval steps (from step 0 on), the control keys (progress,
//    the trainer's stop request) every sampleInterval steps, and the end of the run;
//  - the sampling window (sampling_window.hpp): from step sampleStart and time sampleStartTime
//    on, and with sampleStartTolerance once the wall shear stress is steady;
//  - the training stream ([u.t1, u.t2, u.n] -> [tau.t1, tau.t2] snapshots, stream.hpp);
//  - the inference backend and its fallback (coupling_inference.hpp): a failed call, a dead or
//    missing worker, a model error, or predictions that are not finite (or negative magnitudes)
//    make that step use the fallback wall law (Reichardt's, at the sample height, along the
//    tangential sample velocity), with a rate-limited warning; onInferenceError = abort throws
//    instead, and maxInferenceFailures consecutive failures end the run at the next control step;
//    the model's feature scheme (its registry meta "features": dimensional or wall_units, read
//    once per version that answers) decides how the inputs and the predicted stress are scaled
//    (feature_scaling.hpp); a reply of a version of another scheme than the call's inputs were
//    scaled for is not applied (the wall law, cause "features"), and the next calls scale for it;
//  - the model namespace (NEKRS_ML_MODEL_NAMESPACE): the registry and the workers of a model
//    shared by several solvers; every key of this solver stays in its own namespace;
//  - the solver's case (keys::solver_case: nu, the sample height), stored at the first step;
//  - the wall statistics (wall_statistics.hpp): the geometry, the training rows, the
//    area-weighted wall stress and the momentum balance of the run summary;
//  - the flow statistics (coupling_statistics.hpp): every statsInterval steps (from statsStart /
//    statsStartTime on) the wall-parallel velocity moments and the wall shear stress, summed
//    over the ranks and streamed by rank 0 (flow_stats.hpp);
//  - the time per step (step_timing.hpp); the stop request (agreed by all ranks, then the
//    solver's end_run_at), the solver-done signal and the run summary (JSON, also stored under
//    keys::solver_summary) are here.
//
// Nothing non-finite ever reaches WallFields::apply_wall_stress.
#pragma once

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/config.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/flow_stats.hpp"
#include "nekrs_ml/inference.hpp"
#include "nekrs_ml/stream.hpp"

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nekrs_ml {

class CouplingInference;
class FlowStatisticsRecorder;
class SamplingWindow;
class StepTiming;
class WallStatistics;

// Collective operations over the solver's ranks (MPI in a solver: the core has no MPI).
class Collective {
public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // True on exactly one rank of each node (it writes the per-server control keys).
  virtual bool node_leader() const = 0;
  // Element-wise sum over all ranks, in place.
  virtual void sum(double* values, std::size_t count) = 0;
  virtual void barrier() = 0;
};

// What the coupling needs of the solver's wall. Calls marked collective are made on every rank
// at the same step; a rank without wall points answers 0 points and still takes part.
class WallFields {
public:
  virtual ~WallFields() = default;
  // Wall points of this rank (collective on the first call, at step 0; fixed afterwards).
  virtual std::size_t wall_points() = 0;
  // Model inputs [n][3]: the velocity at the sample points in the wall frame (collective).
  virtual void sample_inputs(double* inputs) = 0;
  // Training targets [n][2]: the resolved wall shear stress [tau.t1, tau.t2] (collective).
  virtual void wall_targets(double* targets) = 0;
  // The wall boundary condition of the next steps: the wall shear stress [n][2] in the wall
  // frame (the stress the fluid exerts on the wall; the wall applies its opposite).
  virtual void apply_wall_stress(const double* tau) = 0;
  // Kinematic viscosity nu (for the fallback wall law).
  virtual double kinematic_viscosity() const = 0;
  // The wall's geometry, asked once after wall_points(): per wall point its surface quadrature
  // weight, its unit tangents t1, t2 (row-major [n][3]) and whether it lies on an element
  // edge (empty on a rank without wall points). known = false (the default): no wall
  // statistics in the global frame, every point trains.
  struct Geometry {
    std::vector<double> weights, tangents1, tangents2;
    std::vector<unsigned char> on_element_edge;
    bool known = false;
  };
  virtual Geometry geometry() { return {}; }
  // The mean-flow momentum balance along x, where the solver knows it (collective; every rank
  // answers alike): the mean pressure gradient (per unit mass) driving the flow, the bulk
  // velocity and the fluid volume. False: not known (no momentum-balance check).
  struct FlowState {
    double driving_gradient = 0.0, bulk_velocity = 0.0, volume = 0.0;
  };
  virtual bool flow_state(FlowState& state) {
    (void)state;
    return false;
  }
  // The volume nodes of this rank for the wall-parallel profiles of a channel (walls y =
  // const): their y coordinates and quadrature weights. Asked once when statsInterval > 0
  // (collective); empty: no nodes on this rank, or no profiles from this solver.
  struct VolumeNodes {
    std::vector<double> y, weights;
  };
  virtual VolumeNodes volume_nodes() { return {}; }
  // The velocity at those nodes, component-major [3][n] (collective).
  virtual void volume_velocity(double* velocity) { (void)velocity; }
  // Makes `step` the last step of the run (the trainer's stop request, or too many failures).
  virtual void end_run_at(long step) = 0;
};

// Why an inference call gave no usable predictions (report.json: inference.failures).
enum class InferenceFailure : int {
  timeout = 0,
  worker_unavailable,
  unknown_model,
  model_error,
  bad_output, // wrong shape or dtype of the reply
  not_finite, // NaN or Inf predictions
  negative_magnitude,
  connection,
  server_error,
  package_missing, // in-process: the package of the model's graph is not compiled (yet)
  // The reply came from a version whose feature scheme (dimensional, wall_units) is not the
  // one the call's inputs were scaled for (the next calls are), or one this solver does not
  // know, or whose registry meta is missing.
  features,
  count_ // number of causes
};
const char* failure_name(InferenceFailure cause);

struct CouplingOptions {
  enum class OnError { fallback, abort };

  std::string ns = NKML_KEY_DEFAULT_NAMESPACE;
  // The namespace of the model registry and the model workers (NEKRS_ML_MODEL_NAMESPACE, for
  // solvers that share them, e.g. an ensemble's members); ns when unset. Every solver key
  // (stream, control, reply lists, summary) stays in ns.
  std::string model_ns = NKML_KEY_DEFAULT_NAMESPACE;
  bool training = false, inferring = false;
  bool infer_only = false; // workflow = infer: a model must exist from the start
  int sample_interval = 10;
  long sample_start = 0;          // sampleStart: first step streamed
  double sample_start_time = 0.0; // sampleStartTime: first time streamed
  double sample_start_tolerance = 0.0; // sampleStartTolerance: > 0 waits for a steady wall stress
  int sample_start_checks = 20;        // sampleStartChecks: control checks in that test
  int inference_interval = 1;
  std::string model = "wall_model";
  double sample_height = 0.1;
  bool float64 = false;     // snapshot precision
  bool apply = true;        // applyPredictions
  OnError on_error = OnError::fallback;
  int max_failures = 50;    // consecutive failed calls that end the run
  double timeout_s = 30.0;  // every database call
  double inference_timeout_s = 10.0;
  int workers = 1;
  bool inprocess = false;         // inferenceBackend = inprocess
  std::string inprocess_device = "cpu";
  int inprocess_threads = 1;
  double reload_interval_s = 0.25;
  bool train_edge_nodes = false; // trainingNodes = all (default interior: edge nodes left out)
  int stats_interval = 0;          // statsInterval: flow statistics every n steps (0: none)
  long stats_start = 0;            // statsStart: first step of the statistics
  double stats_start_time = 0.0;   // statsStartTime: first time of the statistics

  // The [NEKRS_ML] options; the namespace of the launcher's environment (NEKRS_ML_NAMESPACE)
  // wins over the .par's. Throws ConfigError for workflow = off (nothing to couple).
  static CouplingOptions from_config(const Config& config);
};

// Log-spaced histogram: exact counts that add across ranks, percentiles to ~5 %.
class LogHistogram {
public:
  static constexpr int kBins = 240;
  LogHistogram(double low, double high); // values outside [low, high) go to the end bins
  void add(double value);
  // p in [0, 100]; NaN when empty.
  double percentile(double p) const;
  double count() const;
  std::vector<double>& bins() { return bins_; }
  const std::vector<double>& bins() const { return bins_; }

private:
  double log_low_, log_high_;
  std::vector<double> bins_;
};

class Coupling {
public:
  // Connects from the launcher's environment (Client::options_from_env). `comm` and `fields`
  // must outlive the coupling. Throws ConfigError for invalid options.
  Coupling(const Config& config, Collective& comm, WallFields& fields);
  // With an existing connection (owned by the coupling from now on).
  Coupling(const Config& config, Collective& comm, WallFields& fields,
           std::unique_ptr<Client> client);
  // An inference backend other than the model workers (e.g. in-process), replacing the worker
  // client. Call before the first step.
  void set_inference_backend(std::unique_ptr<InferenceBackend> backend);
  ~Coupling();

  Coupling(const Coupling&) = delete;
  Coupling& operator=(const Coupling&) = delete;

  // After solver step `tstep` (0: the initial state, before the first step) at time `time`.
  // Steps must increase; a repeated step is ignored (NekRS may call twice per step). On the
  // step the solver will end with, pass last_step = true (or call finish()). Collective.
  void step(long tstep, double time, bool last_step);

  // Ends the coupling (collective, idempotent): the last snapshots are announced on every rank
  // before the node leaders mark the solver done; the counters are summed over the ranks.
  // Returns the run summary (JSON) on rank 0, "" elsewhere; also stored in the database
  // (keys::solver_summary). Later calls return the same summary.
  std::string finish(long tstep);

  bool finished() const { return finished_; }
  // The step the run will end with after a stop request or too many failures (-1: none).
  long end_step() const { return end_step_; }
  // Why the run ends early: "" (it does not), "trainer", "inference_failures".
  const std::string& end_reason() const { return end_reason_; }

  const CouplingOptions& options() const { return options_; }
  Client& client() { return *client_; }

  // This rank's counters (before finish()'s sum).
  long long inference_calls() const;
  long long fallback_steps() const;
  long long failures(InferenceFailure cause) const;
  std::uint64_t model_version() const;
  // The feature scheme this rank's inference calls scale for ("dimensional", "wall_units"),
  // that of the last version that answered; "" before any version answered.
  std::string model_features() const;
  long long snapshots_written() const { return stream_ ? stream_->snapshots_written() : 0; }
  // Whether (tstep, time) lies in the sampling window (sampleStart, sampleStartTime, and with
  // sampleStartTolerance the steadiness of the wall stress, once it was reached).
  bool in_sampling_window(long tstep, double time) const;

private:
  void start();
  void put_case();
  void put_snapshot(long tstep, double time, bool predicted_now);
  void control(long tstep, double time);
  void put_holdout();
  void check_steadiness(long tstep, double time);
  // The resolved wall stress of this step (asked of the solver once per step: collective).
  const std::vector<double>& resolved_stress();
  std::string summary_json(const std::vector<double>& totals) const;
  void warn(const std::string& text) const;
  void log(const std::string& text) const;

  CouplingOptions options_;
  Collective& comm_;
  WallFields& fields_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<TrainingStream> stream_;
  std::unique_ptr<CouplingInference> inference_;
  std::unique_ptr<SamplingWindow> window_;
  std::unique_ptr<WallStatistics> wall_;
  std::unique_ptr<FlowStatisticsRecorder> statistics_;
  std::unique_ptr<StepTiming> timing_;

  bool started_ = false, finished_ = false;
  long last_tstep_ = -1;
  long end_step_ = -1;
  std::string end_reason_;
  std::string summary_;
  double nu_ = 0.0;
  std::size_t n_ = 0;

  std::vector<double> inputs_, targets_;
  std::vector<float> inputs32_, targets32_;
  std::vector<double> train_inputs_, train_targets_; // the training rows, when not all rows train
  bool have_inputs_ = false;     // inputs_ hold this step's sample
  bool have_targets_ = false;    // targets_ hold this step's resolved stress
  long long warnings_ = 0, control_errors_ = 0;
  std::uint64_t data_digest_ = 1469598103934665603ULL; // FNV-1a of every streamed byte
};

} // namespace nekrs_ml
