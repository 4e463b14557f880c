// Test stand-in for NekRS 25.x bcData.h (include/app/nrs/bdry/ of an installation, where
// cmake/udf.cmake looks to tell 25.x from 24.x): the argument of the OKL boundary functions,
// as C++ so that a .okl boundary function compiles as a C++ function. NekRS's OKL declares
// usrwrk as `@globalPtr const dfloat *`; here it is a plain pointer.
#pragma once

using dfloat = double; // NekRS's default build (as nekrsSys.hpp)

// Case-insensitive comparison, as NekRS's OKL helper.
inline int nekrs_strcmp(const char* a, const char* b)
{
  auto lower = [](char ch) {
    return (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch;
  };
  while (*a != '\0' && *b != '\0' && lower(*a) == lower(*b)) {
    ++a;
    ++b;
  }
  return lower(*a) - lower(*b);
}

// Inside a boundary function: whether it is called for the named field ("fluid velocity",
// "scalar00", ...).
#define isField(a) (nekrs_strcmp(bc->fieldName, a) == 0)

struct bcData {
  char fieldName[32];

  int idxVol;      // volume index of the wall node (vmapM)
  int fieldOffset;
  int id;          // boundary ID
  double time;

  dfloat x, y, z;
  dfloat nx, ny, nz;       // outward unit normal
  dfloat t1x, t1y, t1z;    // face tangents
  dfloat t2x, t2y, t2z;
  dfloat tr1, tr2;         // traction along t1, t2 (udfNeumann output)

  dfloat uxFluid, uyFluid, uzFluid;
  dfloat pFluid;
  dfloat uxFluidInt, uyFluidInt, uzFluidInt;

  int idScalar;
  dfloat sScalar, fluxScalar, sScalarInt, sInfScalar, h;
  dfloat uxGeom, uyGeom, uzGeom;
  dfloat transCoeff, diffCoeff;

  const dfloat* usrwrk;
};
