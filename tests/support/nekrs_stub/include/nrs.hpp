// Test stand-in for NekRS 25.x nrs.hpp: nrs_t, the incompressible Navier-Stokes app.
#pragma once

#include "platform.hpp"
#include "app.hpp"
#include "fluidSolver.hpp"
#include "mesh.h"

#include <memory>
#include <string>

class nrs_t : public app_t {
public:
  std::string id() const override { return "nrs"; }

  // NekRS's rule: STOP AT ELAPSED TIME (minutes) if set, else END TIME if >= 0, else the step
  // NUMBER TIMESTEPS.
  int setLastStep(double timeNew, int tstep, double elapsedTime) override;

  // Strain rate S = (grad u + grad u^T) / 2 of the velocity on the volume nodes: 6 fields of
  // fieldOffset values in the order S11, S12, S13, S22, S23, S33 (NekRS's SijOij kernel).
  occa::memory strainRate(bool smooth = true);
  occa::memory strainRate(dlong offset, const occa::memory& o_U, bool smooth = true);

  // rho * mean dp/dx of the constant-flow-rate correction of the last step (NekRS 25.x);
  // the stand-in has no flow-rate control and returns stubFlowRateScale.
  dfloat flowRateScaleFactor() const { return stubFlowRateScale; }
  dfloat stubFlowRateScale = 0;

  mesh_t* meshV = nullptr;
  dlong fieldOffset = -1;
  std::unique_ptr<fluidSolver_t> fluid = nullptr;
};
