// Test stand-in for NekRS 25.x app_t (platform->app): the members the adapter uses.
#pragma once

#include "nekrsSys.hpp"
#include "bdryBase.hpp"

#include <string>

class app_t {
public:
  virtual ~app_t() = default;
  virtual std::string id() const { return ""; }
  // Sets lastStep from the run options (END TIME, NUMBER TIMESTEPS, STOP AT ELAPSED TIME).
  virtual int setLastStep(double timeNew, int tstep, double elapsedTime) = 0;

  int lastStep = 0;
  int tstep = 0;
  bdryBase* bc = nullptr;
};
