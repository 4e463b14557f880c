// Test stand-in for NekRS 25.x nekrsSys.hpp: the basic types and the global `platform`.
#pragma once

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "occa.hpp"

using dfloat = double; // NekRS's default build (NEKRS_USE_DFLOAT_FLOAT off)
using dlong = int;
using hlong = long long int;

#define MPI_DFLOAT MPI_DOUBLE
#define MPI_DLONG MPI_INT
#define MPI_HLONG MPI_LONG_LONG_INT

struct platform_t;
extern platform_t* platform;
