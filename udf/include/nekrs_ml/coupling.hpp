// nekrs_ml::Coupling — the per-step policy of a solver coupled to nekrs_ml. Every solver drives
// the same object: NekRS through the adapter (udf/nekrs/plugin.hpp), the stand-in solver through
// nekrs_ml._core. The solver supplies two small interfaces — its collective operations and its
// wall fields — and calls step() once per time step; everything else lives here:
//
//  - the cadence: a snapshot every sampleInterval steps (from step sampleInterval on, inside
//    the sampling window: from step sampleStart and time sampleStartTime on), an
//    inference call every inferenceInterval steps (from step 0 on), the control keys (progress,
//    the trainer's stop request) every sampleInterval steps;
//  - the training stream ([u.t1, u.t2, u.n] -> [tau.t1, tau.t2] snapshots);
//  - the inference backend and its fallback: a failed call, a dead or missing worker, a model
//    error, or predictions that are not finite (or negative magnitudes) make that step use the
//    fallback wall law (Reichardt's, at the sample height, along the tangential sample velocity),
//    with a rate-limited warning; onInferenceError = abort throws instead, and
//    maxInferenceFailures consecutive failures end the run at the next control step;
//  - the stop request (agreed by all ranks, then the solver's end_run_at) and the solver-done
//    signal; the counters and the run summary (JSON, also stored under keys::solver_summary);
//  - the flow statistics: every statsInterval steps (from statsStart / statsStartTime on) the
//    wall-parallel velocity moments and the wall shear stress, summed over the ranks and
//    streamed by rank 0 (flow_stats.hpp).
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
  count_ // number of causes
};
const char* failure_name(InferenceFailure cause);

struct CouplingOptions {
  enum class OnError { fallback, abort };

  std::string ns = NKML_KEY_DEFAULT_NAMESPACE;
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
  long long inference_calls() const { return calls_; }
  long long fallback_steps() const { return fallbacks_; }
  long long failures(InferenceFailure cause) const {
    return failures_[static_cast<std::size_t>(cause)];
  }
  std::uint64_t model_version() const { return version_; }
  long long snapshots_written() const { return stream_ ? stream_->snapshots_written() : 0; }
  // Whether (tstep, time) lies in the sampling window (sampleStart, sampleStartTime, and with
  // sampleStartTolerance the steadiness of the wall stress, once it was reached).
  bool in_sampling_window(long tstep, double time) const;

private:
  void start();
  void run_inference(long tstep);
  bool check_predictions(const InferenceResult& result, InferenceFailure& cause);
  void predictions_to_stress(std::size_t columns);
  void fallback_stress();
  void apply_stress(long tstep);
  void record_failure(long tstep, InferenceFailure cause, const std::string& detail);
  // A call of train+infer that found no model (version or package) yet: remembered and logged.
  void note_waiting(long tstep, const std::string& reason);
  // Rank 0's inference counters for the launcher's progress line (JSON).
  std::string inference_progress_json() const;
  void put_snapshot(long tstep, double time, bool predicted_now);
  void control(long tstep, double time);
  void put_holdout();
  void select_training_rows();
  const double* training_rows(const std::vector<double>& values, std::size_t columns,
                              std::vector<double>& scratch) const;
  void add_wall_stress(const std::vector<double>& tau, bool interior_edge_split,
                       std::vector<double>& sums) const;
  std::string wall_stress_json(const std::vector<double>& totals, std::size_t at) const;
  void add_flow_state(double time);
  void check_steadiness(long tstep, double time);
  std::string steadiness_json() const;
  std::string momentum_json(double area, double tau_x) const;
  std::string summary_json(const std::vector<double>& totals) const;
  std::string window_json() const;
  bool statistics_due(long tstep, double time) const;
  void start_statistics();
  void record_statistics(long tstep, double time);
  void add_streamwise_stress(const std::vector<double>& tau, double* sums) const;
  std::string statistics_json() const;
  std::string timing_json(const std::vector<double>& totals, std::size_t at) const;
  void warn(const std::string& text) const;
  void log(const std::string& text) const;

  CouplingOptions options_;
  Collective& comm_;
  WallFields& fields_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<TrainingStream> stream_;
  std::unique_ptr<InferenceBackend> inference_;

  bool started_ = false, finished_ = false;
  long last_tstep_ = -1;
  long end_step_ = -1;
  std::string end_reason_;
  std::string summary_;
  double nu_ = 0.0;
  std::size_t n_ = 0;

  std::vector<double> inputs_, targets_, stress_;
  std::vector<double> model_stress_; // the model's stress when applyPredictions = false
  std::vector<float> model_inputs_, predictions_;
  std::vector<float> inputs32_, targets32_;
  // Wall geometry (empty when the solver gives none), the rows that train (all or the points
  // off element edges) and the time sums of area-weighted wall stress in the global frame:
  // per group (applied, resolved, resolved interior, resolved edge) sum w tau_x, w tau_y,
  // w tau_z and w over the steps of the sampling window.
  WallFields::Geometry geometry_;
  std::vector<std::size_t> train_rows_;
  std::vector<double> train_inputs_, train_targets_;
  std::vector<double> stress_sums_ = std::vector<double>(16, 0.0);
  long long applied_steps_ = 0, resolved_steps_ = 0;
  // The momentum balance over the sampling window (control steps): the mean driving gradient,
  // the bulk velocity at the first and the last of them, and the fluid volume.
  long long balance_steps_ = 0;
  double drive_sum_ = 0.0, volume_ = 0.0;
  double first_ub_time_ = 0.0, first_ub_ = 0.0, last_ub_time_ = 0.0, last_ub_ = 0.0;
  bool balance_known_ = true;
  // Automatic start (sampleStartTolerance): the wall-stress means of the last control checks,
  // and when the window opened.
  bool steady_ = true;
  std::vector<double> steadiness_history_;
  long steady_step_ = -1;
  double steady_time_ = 0.0, last_change_ = -1.0;
  bool have_inputs_ = false;     // inputs_ hold this step's sample
  bool have_targets_ = false;    // targets_ hold this step's resolved stress
  bool window_open_ = false;     // a snapshot inside the sampling window was taken
  // Flow statistics: the planes of the profiles, this rank's node weights and velocity, the
  // records streamed (the same count on every rank) and the first and last step recorded.
  ProfileBinning profile_;
  std::vector<double> node_weights_, node_velocity_;
  long long stats_records_ = 0, stats_errors_ = 0;
  long stats_first_step_ = -1, stats_last_step_ = -1;
  // [first, last] step and time of the snapshots streamed (the same steps on every rank)
  long window_first_step_ = -1, window_last_step_ = -1;
  double window_first_time_ = 0.0, window_last_time_ = 0.0;

  // time of this rank: the solver's between calls, the coupling's inside them
  double solver_seconds_ = 0.0, coupling_seconds_ = 0.0;
  long long timed_steps_ = 0, timed_calls_ = 0;
  std::chrono::steady_clock::time_point left_;
  // counters of this rank
  long long calls_ = 0, waiting_calls_ = 0, fallbacks_ = 0, predicted_steps_ = 0;
  long long consecutive_failures_ = 0, warnings_ = 0, nonfinite_inputs_ = 0, control_errors_ = 0;
  std::array<long long, static_cast<std::size_t>(InferenceFailure::count_)> failures_{};
  std::array<long long, static_cast<std::size_t>(InferenceFailure::count_)> warned_{};
  std::uint64_t version_ = 0;
  // What the last call that found no model waited for (empty once predictions come), and when
  // that was last logged (rank 0 logs it at most every kWaitingLogSeconds).
  std::string waiting_for_;
  double waiting_logged_ = -1.0;
  std::uint64_t data_digest_ = 1469598103934665603ULL; // FNV-1a of every streamed byte
  LogHistogram latency_{1e-6, 1e3};   // seconds per inference call
  LogHistogram error_{1e-9, 1e3};     // |pred - resolved| / |resolved| per point, current version
  std::vector<std::array<long long, 3>> version_by_step_; // [first, last, version] (this rank)
  std::vector<std::array<double, 3>> errors_by_step_;     // [step, version, relative L2] (rank 0)
};

} // namespace nekrs_ml
