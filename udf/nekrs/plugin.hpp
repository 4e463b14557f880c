// nekrs_ml NekRS plugin: streams wall samples for online training of a wall model and/or applies
// its predictions as the wall boundary condition. A case .udf includes this header and calls
//
//   UDF_LoadKernels(deviceKernelProperties& kernelInfo) { nekrs_ml::nekrs::load_kernels(kernelInfo); }
//   UDF_Setup()                                          { ...; nekrs_ml::nekrs::setup(); }
//   UDF_ExecuteStep(double time, int tstep)              { nekrs_ml::nekrs::execute_step(time, tstep); }
//
// and, for a wall-modelled case, includes the BC function in its __okl__ section:
//
//   #ifdef __okl__
//   #include "nekrs_ml/nekrs/wall_model.okl"
//   #endif
//
// What it does (docs/nekrs.md):
//  - setup: reads the [NEKRS_ML] section of the case .par with nekrs_ml::Config, connects to the
//    database named by the launcher's environment (Client::options_from_env), registers the
//    training stream and/or the inference client, and reserves the usrwrk field of the BC;
//  - first execute_step (tstep 0, after NekRS has finalised the geometry): one wall point per
//    node of every face with a boundary ID in wallBoundaryIds, and its sample point at
//    sampleHeight along the inward normal, located with NekRS's point interpolation;
//  - every sampleInterval steps (training): inputs [u.t1, u.t2, u.n] at the sample points and
//    targets [tau.t1, tau.t2] from the strain rate at the wall nodes, put on the stream;
//  - every inferenceInterval steps (inference, from tstep 0): inputs sent to modelName; |tau|
//    of the predictions goes to usrwrk for the BC kernel;
//  - every sampleInterval steps: rank 0 records the step, every rank reads the trainer's stop
//    request and the ranks agree (MPI_Allreduce MAX); a stop makes the next step the last one;
//  - last step: one rank per node marks the solver done.
// Errors (database unreachable, model missing, ...) abort the run with a message naming the rank.
#pragma once

#include "nekrs_ml/nekrs/bc.hpp"
#include "nekrs_ml/nekrs/compat.hpp"
#include "nekrs_ml/nekrs/wall_sampler.hpp"

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/config.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inference.hpp"
#include "nekrs_ml/keys.hpp"
#include "nekrs_ml/stream.hpp"
#include "nekrs_ml/wall.hpp"
#include "nekrs_ml/wall_points.hpp"

#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

// Field of the user work array that holds |tau| for the BC (also passed to the OKL snippet).
#ifndef NEKRS_ML_USRWRK_FIELD
#define NEKRS_ML_USRWRK_FIELD 0
#endif

namespace nekrs_ml::nekrs {

class Plugin {
public:
  static Plugin& instance() {
    static Plugin plugin;
    return plugin;
  }

  // UDF_LoadKernels: the OKL snippet's version switch, usrwrk field and include path.
  void load_kernels(deviceKernelProperties& kernelInfo) {
    kernelInfo.define("NEKRS_ML_NEKRS_VERSION") = NEKRS_ML_NEKRS_VERSION;
    kernelInfo.define("NEKRS_ML_USRWRK_FIELD") = NEKRS_ML_USRWRK_FIELD;
#ifdef NEKRS_ML_INCLUDE_DIR
    kernelInfo.okl_include_paths() += NEKRS_ML_INCLUDE_DIR;
#endif
  }

  // UDF_Setup. `par_file` defaults to the case .par.
  void setup(const std::string& par_file = "") {
    guard("setup", [&] {
      nrs_ = compat::solver();
      comm_ = compat::comm();
      rank_ = compat::rank();
      MPI_Comm node;
      MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
      int node_rank = 0;
      MPI_Comm_rank(node, &node_rank);
      MPI_Comm_free(&node);
      node_leader_ = node_rank == 0;

      const Config config = Config::from_par_file(par_file.empty() ? compat::par_file() : par_file);
      const std::string workflow = config.get_string("nekrs_ml", "workflow");
      // The BC field exists in every workflow, so that a wall-model BC never reads past usrwrk.
      stress_ = std::make_unique<WallStressField>(nrs_, NEKRS_ML_USRWRK_FIELD);
      if (workflow == "off") {
        log("workflow = off: not connecting");
        return;
      }
      training_ = workflow == "train" || workflow == "train+infer";
      inferring_ = workflow == "infer" || workflow == "train+infer";
      infer_only_ = workflow == "infer";
      sample_interval_ = static_cast<int>(config.get_int("nekrs_ml", "sampleInterval"));
      inference_interval_ = static_cast<int>(config.get_int("nekrs_ml", "inferenceInterval"));
      height_ = config.get_double("nekrs_ml", "sampleHeight");
      wall_ids_ = config.get_int_list("nekrs_ml", "wallBoundaryIds");
      float64_ = config.get_string("nekrs_ml", "snapshotDtype") == "float64";
      apply_ = config.get_bool("nekrs_ml", "applyPredictions");
      model_ = config.get_string("nekrs_ml", "modelName");
      mu_ = compat::viscosity();
      nu_ = mu_ / compat::density();
      const char* ns = std::getenv("NEKRS_ML_NAMESPACE");
      ns_ = (ns && *ns) ? ns : config.get_string("nekrs_ml", "namespace");

      client_ = std::make_unique<Client>(Client::options_from_env());
      client_->set_timeout(config.get_double("nekrs_ml", "timeout"));
      if (training_) {
        StreamOptions options = StreamOptions::from_config(config, rank_);
        options.ns = ns_;
        stream_ = std::make_unique<TrainingStream>(*client_, options);
      }
      if (inferring_) {
        InferenceOptions options;
        options.ns = ns_;
        options.rank = rank_;
        options.workers = static_cast<int>(config.get_int("nekrs_ml", "workers"));
        options.timeout_s = config.get_double("nekrs_ml", "inferenceTimeout");
        inference_ = std::make_unique<InferenceClient>(*client_, options);
      }
      active_ = true;
      log("workflow = " + workflow + ", namespace = " + ns_ + ", sampleHeight = " +
          std::to_string(height_) + ", usrwrk field " + std::to_string(NEKRS_ML_USRWRK_FIELD) +
          " (NekRS " + std::to_string(NEKRS_ML_NEKRS_VERSION) + " API)");
    });
  }

  // UDF_ExecuteStep.
  void execute_step(double time, int tstep) {
    // 25.x calls it once per corrector iteration: act once per step, and not after the last one
    if (!active_ || done_ || tstep == last_tstep_) return;
    last_tstep_ = tstep;
    guard("step " + std::to_string(tstep), [&] {
      if (!sampler_) build_sampler();
      const bool sample = training_ && tstep > 0 && stream_->due(tstep);
      const bool infer = inferring_ && tstep % inference_interval_ == 0;
      bool predicted = false;
      if (sample || infer) sample_inputs();
      if (infer) predicted = run_inference(tstep);
      if (sample) put_snapshot(tstep, time, infer, predicted);
      if (tstep > 0 && tstep % sample_interval_ == 0) control(tstep);
      if (compat::last_step(nrs_)) finish(tstep);
    });
  }

  ~Plugin() {
    // A run that ended without a last step seen here still tells the trainer it is over.
    if (active_ && !done_ && node_leader_ && client_) {
      try {
        TrainingStream::mark_done(*client_, ns_);
      } catch (...) {
      }
    }
    // The plugin is a static object, destroyed after NekRS has called MPI_Finalize and released
    // its OCCA device: the point interpolation (gslib findpts frees its MPI communicator) and the
    // device buffers must not be destroyed then (Open MPI aborts on MPI_Comm_free after
    // MPI_Finalize), so they are left to the process exit.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) (void)sampler_.release();
  }

  const WallSampler* sampler() const { return sampler_.get(); }

private:
  Plugin() = default;

  template <typename Fn> void guard(const std::string& where, Fn&& fn) {
    try {
      fn();
    } catch (const std::exception& error) {
      std::cerr << "nekrs_ml: rank " << rank_ << ": " << where << ": error: " << error.what()
                << std::endl;
      MPI_Abort(comm_ == MPI_COMM_NULL ? MPI_COMM_WORLD : comm_, EXIT_FAILURE);
    }
  }

  void log(const std::string& text) const {
    if (rank_ == 0) std::cout << "nekrs_ml: " << text << std::endl;
  }

  void build_sampler() {
    sampler_ = std::make_unique<WallSampler>(nrs_, wall_ids_, height_);
    const std::size_t n = sampler_->size();
    long long total = static_cast<long long>(n);
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_LONG_LONG, MPI_SUM, comm_);
    if (total == 0) throw ConfigError("no wall faces with the boundary IDs in wallBoundaryIds");
    log(std::to_string(total) + " wall points, sample points at h = " + std::to_string(height_));
    inputs32_.resize(3 * n);
    predictions_.resize(2 * n);
  }

  // Velocity at the sample points in the wall frame (collective).
  void sample_inputs() {
    sampler_->velocity(velocity_);
    const std::size_t n = sampler_->size();
    sampler_->points().to_wall_frame(velocity_.data(), n, 1, inputs32_.data());
    if (float64_) {
      inputs64_.resize(3 * n);
      sampler_->points().to_wall_frame(velocity_.data(), n, 1, inputs64_.data());
    }
  }

  // Predictions of this step into usrwrk; false when none were made (no model yet).
  bool run_inference(int tstep) {
    const WallPoints& points = sampler_->points();
    const std::size_t n = points.size();
    if (n == 0) return false;
    bool predicted = false;
    try {
      const InferenceResult result =
          inference_->run(model_, n, 3, inputs32_.data(), predictions_.data(), predictions_.size());
      predicted = true;
      if (result.version != version_ && rank_ == 0) {
        log("step " + std::to_string(tstep) + ": predictions of " + model_ + " version " +
            std::to_string(result.version));
      }
      version_ = result.version;
    } catch (const KeyNotFoundError& error) {
      if (infer_only_) {
        throw ConfigError(std::string(error.what()) + " (workflow = infer needs a deployed " +
                          "model: set deployModel or publish " + model_ + " first)");
      }
      if (!warned_no_model_) {
        warned_no_model_ = true;
        std::cerr << "nekrs_ml: rank " << rank_ << ": no model " << model_
                  << " yet; the BC uses Reichardt's law until one is published" << std::endl;
      }
    }
    if (predicted && apply_) {
      stress_->set(points, predictions_.data());
    } else {
      reichardt_fallback(points);
    }
    return predicted;
  }

  // |tau| from Reichardt's law at the tangential velocity of the sample point.
  void reichardt_fallback(const WallPoints& points) {
    std::vector<double> tau(points.size());
    for (std::size_t i = 0; i < points.size(); ++i) {
      const double u = std::hypot(inputs32_[3 * i], inputs32_[3 * i + 1]);
      tau[i] = reichardt_wall_shear_stress(u, height_, nu_);
    }
    stress_->set_magnitudes(points, tau);
  }

  void put_snapshot(int tstep, double time, bool inferred, bool predicted) {
    sampler_->strain_rate(strain_); // collective
    const WallPoints& points = sampler_->points();
    const std::size_t n = points.size();
    const std::size_t offset = strain_.size() / 6;
    PutResult result;
    if (float64_) {
      targets64_.resize(2 * n);
      points.wall_shear_stress(strain_.data(), offset, mu_, targets64_.data());
      result = stream_->put(tstep, time, n, 3, inputs64_.data(), 2, targets64_.data());
    } else {
      targets32_.resize(2 * n);
      points.wall_shear_stress(strain_.data(), offset, mu_, targets32_.data());
      result = stream_->put(tstep, time, n, 3, inputs32_.data(), 2, targets32_.data());
    }
    if (!result.warning.empty() && ++warnings_ <= 3) {
      std::cerr << "nekrs_ml: rank " << rank_ << ": warning: " << result.warning << std::endl;
    }
    if (inferred) report_error(tstep, predicted);
  }

  // train+infer: relative L2 error of this step's predictions against the resolved stress.
  void report_error(int tstep, bool predicted) {
    double sums[3] = {0.0, 0.0, predicted ? 1.0 : 0.0};
    if (predicted) {
      for (std::size_t i = 0; i < predictions_.size(); ++i) {
        const double target = float64_ ? targets64_[i] : targets32_[i];
        sums[0] += std::pow(predictions_[i] - target, 2);
        sums[1] += target * target;
      }
    }
    MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, comm_);
    if (sums[2] > 0 && sums[1] > 0) {
      log("step " + std::to_string(tstep) + ": relative L2 error of the predicted wall shear " +
          "stress: " + std::to_string(std::sqrt(sums[0] / sums[1])));
    }
  }

  void control(int tstep) {
    if (rank_ == 0) client_->set_string(keys::solver_step(ns_), std::to_string(tstep));
    int stop = (training_ && TrainingStream::stop_requested(*client_, ns_)) ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, comm_);
    if (stop && !stopping_ && !compat::last_step(nrs_)) {
      stopping_ = true;
      compat::end_run_at(tstep + 1);
      log("the trainer asked to stop: step " + std::to_string(tstep + 1) + " is the last one");
    }
  }

  void finish(int tstep) {
    if (done_) return;
    MPI_Barrier(comm_); // every rank's last snapshot is announced before done
    if (node_leader_) {
      client_->set_string(keys::solver_step(ns_), std::to_string(tstep));
      TrainingStream::mark_done(*client_, ns_);
    }
    done_ = true;
    // Release the point interpolation while MPI and the device are still up (collective: every
    // rank sees the same last step).
    sampler_.reset();
    if (stream_) {
      long long counts[2] = {stream_->snapshots_written(), stream_->snapshots_dropped()};
      MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_LONG_LONG, MPI_SUM, comm_);
      log("done at step " + std::to_string(tstep) + ": " + std::to_string(counts[0]) +
          " snapshots written, " + std::to_string(counts[1]) + " dropped");
    } else {
      log("done at step " + std::to_string(tstep));
    }
  }

  nrs_t* nrs_ = nullptr;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  bool node_leader_ = false;
  bool active_ = false, training_ = false, inferring_ = false, infer_only_ = false;
  bool float64_ = false, apply_ = true, stopping_ = false, done_ = false;
  bool warned_no_model_ = false;
  int sample_interval_ = 10, inference_interval_ = 1, last_tstep_ = -1, warnings_ = 0;
  double height_ = 0.1, mu_ = 0.0, nu_ = 0.0;
  std::vector<long long> wall_ids_;
  std::string ns_, model_;
  std::uint64_t version_ = 0;

  std::unique_ptr<Client> client_;
  std::unique_ptr<TrainingStream> stream_;
  std::unique_ptr<InferenceClient> inference_;
  std::unique_ptr<WallSampler> sampler_;
  std::unique_ptr<WallStressField> stress_;

  std::vector<double> velocity_, strain_, inputs64_, targets64_;
  std::vector<float> inputs32_, targets32_, predictions_;
};

// The hooks a case .udf calls.
inline void load_kernels(deviceKernelProperties& kernelInfo) {
  Plugin::instance().load_kernels(kernelInfo);
}
inline void setup(const std::string& par_file = "") { Plugin::instance().setup(par_file); }
inline void execute_step(double time, int tstep) { Plugin::instance().execute_step(time, tstep); }

} // namespace nekrs_ml::nekrs
