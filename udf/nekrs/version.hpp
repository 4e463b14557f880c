// NEKRS_ML_NEKRS_VERSION: the major NekRS version whose UDF API the adapter is compiled for.
//   24: NekRS 24.x (Nek5000/nekRS `next`, argonne-lcf/nekRS-ML): global nrs_t from
//       platform->solver, nrs->o_usrwrk, BC function codedFixedGradientVelocity.
//   25: NekRS 25.x (argonne-lcf/nekRS): nrs_t from platform->app, fluid solver nrs->fluid,
//       platform->app->bc->o_usrwrk, BC function udfNeumann.
// NekRS has no preprocessor version macro (its NEKRS_VERSION is a constexpr string), so the
// version comes from the case build (cmake/udf.cmake defines it from the installed header
// layout), or is detected here from a header that exists in only one of the versions.
// Define it yourself (-DNEKRS_ML_NEKRS_VERSION=24) to override both.
#pragma once

#ifndef NEKRS_ML_NEKRS_VERSION
#if __has_include("fluidSolver.hpp")
#define NEKRS_ML_NEKRS_VERSION 25
#elif __has_include("bcMap.hpp")
#define NEKRS_ML_NEKRS_VERSION 24
#else
#error "nekrs_ml: cannot tell the NekRS version; build inside a NekRS case (udf) or define NEKRS_ML_NEKRS_VERSION (24 or 25)"
#endif
#endif

#if NEKRS_ML_NEKRS_VERSION != 24 && NEKRS_ML_NEKRS_VERSION != 25
#error "nekrs_ml: NEKRS_ML_NEKRS_VERSION must be 24 or 25"
#endif
