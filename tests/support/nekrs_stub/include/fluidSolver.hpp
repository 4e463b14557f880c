// Test stand-in for NekRS 25.x fluidSolver_t (nrs->fluid): the velocity and its field offset.
#pragma once

#include "nekrsSys.hpp"
#include "mesh.h"

class fluidSolver_t {
public:
  mesh_t* mesh = nullptr;
  dlong fieldOffset = -1; // stride between the velocity components (>= mesh->Nlocal)
  occa::memory o_U;       // 3 * fieldOffset values, component-major
};
