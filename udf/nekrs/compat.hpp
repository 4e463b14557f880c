// The few NekRS objects the adapter uses, behind one interface for NekRS 24.x and 25.x.
// Only this header and the OKL snippet differ between the versions.
#pragma once

#include "nekrs_ml/nekrs/version.hpp"

#include "nrs.hpp"
#include "platform.hpp"

#include <mpi.h>

#include <cmath>
#include <string>
#include <vector>

namespace nekrs_ml::nekrs::compat {

inline nrs_t* solver() {
#if NEKRS_ML_NEKRS_VERSION >= 25
  return dynamic_cast<nrs_t*>(platform->app);
#else
  return dynamic_cast<nrs_t*>(platform->solver);
#endif
}

inline MPI_Comm comm() {
#if NEKRS_ML_NEKRS_VERSION >= 25
  return platform->comm.mpiComm();
#else
  return platform->comm.mpiComm;
#endif
}

inline int rank() {
#if NEKRS_ML_NEKRS_VERSION >= 25
  return platform->comm.mpiRank();
#else
  return platform->comm.mpiRank;
#endif
}

// The velocity mesh.
inline mesh_t* mesh(nrs_t* nrs) { return nrs->meshV; }

// Stride between the components of the velocity (and of the strain rate).
inline dlong field_offset(nrs_t* nrs) {
#if NEKRS_ML_NEKRS_VERSION >= 25
  return nrs->fluid->fieldOffset;
#else
  return nrs->fieldOffset;
#endif
}

// Velocity, 3 * field_offset values, component-major.
inline occa::memory& velocity(nrs_t* nrs) {
#if NEKRS_ML_NEKRS_VERSION >= 25
  return nrs->fluid->o_U;
#else
  return nrs->o_U;
#endif
}

// The user work array handed to the boundary kernels (bc->usrwrk). A reference: resizing a
// copy would leave the array the kernels see unchanged.
inline deviceMemory<dfloat>& usrwrk(nrs_t* nrs) {
#if NEKRS_ML_NEKRS_VERSION >= 25
  (void)nrs;
  return platform->app->bc->o_usrwrk;
#else
  return nrs->o_usrwrk;
#endif
}

// Dynamic viscosity mu and density rho of the fluid (.par [FLUID VELOCITY] / [VELOCITY]).
inline double viscosity() {
  dfloat mu = 0;
#if NEKRS_ML_NEKRS_VERSION >= 25
  platform->options.getArgs("FLUID VISCOSITY", mu);
#else
  platform->options.getArgs("VISCOSITY", mu);
#endif
  return mu;
}

inline double density() {
  dfloat rho = 1;
#if NEKRS_ML_NEKRS_VERSION >= 25
  platform->options.getArgs("FLUID DENSITY", rho);
#else
  platform->options.getArgs("DENSITY", rho);
#endif
  return rho;
}

// rho * mean dp/dx with which NekRS held the flow rate constant at the last step (constFlowRate
// in the .par), 0 without constFlowRate; NaN where the NekRS version does not tell (24.x).
inline double flow_rate_pressure_gradient(nrs_t* nrs) {
  if (!platform->options.compareArgs("CONSTANT FLOW RATE", "TRUE")) return 0.0;
#if NEKRS_ML_NEKRS_VERSION >= 25
  return nrs->flowRateScaleFactor();
#else
  (void)nrs;
  return std::nan("");
#endif
}

// Volume integral of the x velocity and the fluid volume, with the mass matrix (collective).
inline void x_flow_and_volume(nrs_t* nrs, MPI_Comm comm, double& flow, double& volume) {
  mesh_t* mesh = nrs->meshV;
  std::vector<dfloat> lmm(mesh->Nlocal), ux(mesh->Nlocal);
  mesh->o_LMM.copyTo(lmm.data(), mesh->Nlocal);
  velocity(nrs).copyTo(ux.data(), mesh->Nlocal); // component 0 comes first
  double sums[2] = {0.0, 0.0};
  for (dlong i = 0; i < mesh->Nlocal; ++i) {
    sums[0] += lmm[i] * ux[i];
    sums[1] += lmm[i];
  }
  MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, comm);
  flow = sums[0];
  volume = sums[1];
}

// Whether NekRS will end the run after the current step.
inline bool last_step(nrs_t* nrs) { return nrs->lastStep != 0; }

// Makes step `tstep` the last one through NekRS's own stop controls: without an elapsed-time
// limit or an end time, NekRS stops at "NUMBER TIMESTEPS".
inline void end_run_at(int tstep) {
  platform->options.removeArgs("STOP AT ELAPSED TIME");
  platform->options.setArgs("END TIME", "-1");
  platform->options.setArgs("NUMBER TIMESTEPS", std::to_string(tstep));
}

// The case .par: NekRS runs in the case directory and CASENAME is the .par stem.
inline std::string par_file() {
  std::string name = platform->options.getArgs("CASENAME");
  if (name.size() < 4 || name.compare(name.size() - 4, 4, ".par") != 0) name += ".par";
  return name;
}

} // namespace nekrs_ml::nekrs::compat
