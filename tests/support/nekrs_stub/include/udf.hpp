// Test stand-in for NekRS 25.x udf.hpp: the hooks a case .udf defines (C linkage, looked up
// by name when NekRS loads the case's libudf.so).
#pragma once

#include "platform.hpp"

extern "C" {
void UDF_Setup0(MPI_Comm comm, setupAide& options);
void UDF_Setup();
void UDF_LoadKernels(deviceKernelProperties& kernelInfo);
void UDF_ExecuteStep(double time, int tstep);
}
