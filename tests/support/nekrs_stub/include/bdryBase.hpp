// Test stand-in for NekRS 25.x bdryBase: the boundary-condition object of the app, which owns
// the user work array handed to the BC kernels as bc->usrwrk.
#pragma once

#include "nekrsSys.hpp"
#include "deviceMemory.hpp"

class bdryBase {
public:
  virtual ~bdryBase() = default;
  deviceMemory<dfloat> o_usrwrk;
};
