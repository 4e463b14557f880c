// Test stand-in for NekRS 24.x bcData.h (include/nrs/bdry/ of an installation): the argument of
// codedFixedGradientVelocity, as C++. 24.x names the wall node's volume index idM and the
// velocity u, v, w, and has no field name (the function is called for the velocity only).
#pragma once

using dfloat = double; // NekRS's default build

struct bcData {
  int idM;         // volume index of the wall node (vmapM)
  int fieldOffset;
  int id;          // boundary ID
  double time;

  dfloat x, y, z;
  dfloat nx, ny, nz;       // outward unit normal
  dfloat t1x, t1y, t1z;    // face tangents
  dfloat t2x, t2y, t2z;
  dfloat tr1, tr2;         // traction along t1, t2 (codedFixedGradientVelocity output)

  dfloat u, v, w;
  dfloat p;
  dfloat uinterp, vinterp, winterp;
  int scalarId;
  dfloat s, flux, sinterp;
  dfloat meshu, meshv, meshw;
  dfloat trans, diff;

  const dfloat* usrwrk;
};
