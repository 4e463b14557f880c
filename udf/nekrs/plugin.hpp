// nekrs_ml NekRS plugin: the NekRS glue of nekrs_ml::Coupling, which owns the whole per-step
// policy (udf/include/nekrs_ml/coupling.hpp) — the same object the stand-in solver drives. A case
// .udf includes this header and calls
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
// What the glue does (docs/nekrs.md):
//  - setup: reads the [NEKRS_ML] section of the case .par with nekrs_ml::Config, reserves the
//    usrwrk fields of the BC, and creates the Coupling with MPI collectives (mpi_collective.hpp)
//    and NekRS's wall (wall_fields.hpp: sample-point velocity, resolved wall shear stress, BC);
//    the connection comes from the launcher's environment;
//  - execute_step: hands each step to Coupling::step (with NekRS's lastStep); the coupling ends
//    the run through NekRS's own stop controls (END TIME / NUMBER TIMESTEPS) when the trainer
//    asks or inference keeps failing;
//  - last step: the coupling marks the solver done and stores the run summary; the plugin then
//    releases the point interpolation and the connection while MPI is still up.
// An error the coupling does not absorb (database unreachable at setup, onInferenceError =
// abort, a bad .par) aborts the run with a message naming the rank.
#pragma once

#include "nekrs_ml/nekrs/compat.hpp"
#include "nekrs_ml/nekrs/mpi_collective.hpp"
#include "nekrs_ml/nekrs/wall_fields.hpp"

#include "nekrs_ml/config.hpp"
#include "nekrs_ml/coupling.hpp"
#include "nekrs_ml/errors.hpp"

#include <mpi.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <string>

// First of the two fields of the user work array that hold the BC's wall shear stress
// [tau.t1, tau.t2] (fields F and F + 1; also passed to the OKL snippet; bc.hpp).
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
      nrs_t* nrs = compat::solver();
      comm_ = compat::comm();
      rank_ = compat::rank();
      const Config config = Config::from_par_file(par_file.empty() ? compat::par_file() : par_file);
      fields_ = std::make_unique<NekrsWallFields>(
          nrs, NEKRS_ML_USRWRK_FIELD, config.get_int_list("nekrs_ml", "wallBoundaryIds"),
          config.get_double("nekrs_ml", "sampleHeight"));
      if (config.get_string("nekrs_ml", "workflow") == "off") {
        if (rank_ == 0) std::cout << "nekrs_ml: workflow = off: not connecting" << std::endl;
        return;
      }
      collective_ = std::make_unique<MpiCollective>(comm_);
      coupling_ = std::make_unique<Coupling>(config, *collective_, *fields_);
      if (rank_ == 0) {
        std::cout << "nekrs_ml: usrwrk fields " << NEKRS_ML_USRWRK_FIELD << ", "
                  << NEKRS_ML_USRWRK_FIELD + 1 << " (NekRS "
                  << NEKRS_ML_NEKRS_VERSION << " API)" << std::endl;
      }
    });
  }

  // UDF_ExecuteStep (25.x calls it once per corrector iteration: the coupling acts once a step).
  void execute_step(double time, int tstep) {
    if (!coupling_) return;
    guard("step " + std::to_string(tstep), [&] {
      coupling_->step(tstep, time, compat::last_step(compat::solver()));
      if (coupling_->finished()) release();
    });
  }

  // Ends the coupling before NekRS finalises MPI, when the run ends without a last step seen
  // here (collective; optional: the last step does the same).
  void finalize() {
    if (!coupling_) return;
    guard("finalize", [&] {
      coupling_->finish(-1);
      release();
    });
  }

  // The case's uniform body force along x per unit mass (e.g. dp/dx of a pressure-driven
  // channel), for the momentum balance of the run summary. Call after setup().
  void set_body_force(double fx) {
    if (fields_) fields_->set_body_force(fx);
  }

  const WallSampler* sampler() const { return fields_ ? fields_->sampler() : nullptr; }
  const Coupling* coupling() const { return coupling_.get(); }

  ~Plugin() {
    // A static object is destroyed after MPI_Finalize: nothing that frees MPI or device
    // resources may run then (Open MPI aborts on MPI_Comm_free after MPI_Finalize).
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) {
      (void)fields_.release();
      (void)coupling_.release();
    }
  }

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

  // The point interpolation and the connection go while MPI and the device are still up; the
  // BC field keeps its last values for the steps NekRS may still take.
  void release() {
    if (fields_) fields_->release();
    coupling_.reset();
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  std::unique_ptr<NekrsWallFields> fields_;
  std::unique_ptr<MpiCollective> collective_;
  std::unique_ptr<Coupling> coupling_;
};

// The hooks a case .udf calls.
inline void load_kernels(deviceKernelProperties& kernelInfo) {
  Plugin::instance().load_kernels(kernelInfo);
}
inline void setup(const std::string& par_file = "") { Plugin::instance().setup(par_file); }
inline void execute_step(double time, int tstep) { Plugin::instance().execute_step(time, tstep); }
inline void finalize() { Plugin::instance().finalize(); }
inline void set_body_force(double fx) { Plugin::instance().set_body_force(fx); }

} // namespace nekrs_ml::nekrs
