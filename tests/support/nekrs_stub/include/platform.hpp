// Test stand-in for NekRS 25.x platform.hpp: the global `platform` with the run options, the
// communicator, the device and the running application (nrs_t).
#pragma once

#include "nekrsSys.hpp"
#include "comm.hpp"
#include "device.hpp"
#include "deviceKernelProperties.hpp"
#include "deviceMemory.hpp"
#include "setupAide.hpp"

class app_t;

const occa::memory o_NULL;

struct platform_t {
  platform_t(setupAide& options_, MPI_Comm commParent, MPI_Comm comm_)
      : options(options_), comm(commParent, comm_) {}

  setupAide& options;
  comm_t comm;
  device_t device;
  app_t* app = nullptr;
};
