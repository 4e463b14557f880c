// Test stand-in for NekRS 25.x mesh_t: hexahedral spectral elements of order N with NekRS's
// layouts (docs/nekrs.md):
//   volume node (i, j, k) of element e:   e * Np + i + j * Nq + k * Nq * Nq (i along r ~ x)
//   face f of element e:                  EToB[f + Nfaces * e] (boundary ID, -1: none)
//   face node m of face f of element e:   vmapM[(e * Nfaces + f) * Nfp + m] = volume index,
//                                         faces' nodes in increasing volume order
//   surface factors of that face node:    o_sgeo[((e * Nfaces + f) * Nfp + m) * Nsgeo + ID]
//   faces: 0: t = -1, 1: s = -1, 2: r = +1, 3: s = +1, 4: r = -1, 5: t = +1.
// nekrsStubBuildBox (nekrs_stub.hpp) fills it for a box of axis-aligned elements.
#pragma once

#include "nekrsSys.hpp"
#include "mesh3D.h"

#include <array>
#include <tuple>
#include <vector>

class mesh_t {
public:
  std::tuple<std::vector<dfloat>, std::vector<dfloat>, std::vector<dfloat>> xyzHost() const {
    std::vector<dfloat> x(Nlocal), y(Nlocal), z(Nlocal);
    o_x.copyTo(x.data(), Nlocal);
    o_y.copyTo(y.data(), Nlocal);
    o_z.copyTo(z.data(), Nlocal);
    return {x, y, z};
  }

  int Nfaces = 6;
  dlong fieldOffset = 0;
  dlong Nelements = 0;
  hlong NelementsGlobal = 0;
  dlong Nlocal = 0;
  int N = 0, Np = 0, Nq = 0;
  int Nfp = 0;
  dlong Nsgeo = ::Nsgeo;
  int* EToB = nullptr;
  dlong* vmapM = nullptr;
  dfloat* gllz = nullptr; // GLL points on [-1, 1]
  dfloat* gllw = nullptr; // GLL weights

  occa::memory o_sgeo, o_vmapM, o_EToB, o_x, o_y, o_z;
  occa::memory o_LMM; // lumped mass matrix: the volume quadrature weight of each node

  // Stand-in only: storage of the host arrays above and the bounds of each (box) element,
  // {x0, x1, y0, y1, z0, z1}.
  std::vector<int> stubEToB;
  std::vector<dlong> stubVmapM;
  std::vector<dfloat> stubGllz, stubGllw;
  std::vector<std::array<double, 6>> stubElementBounds;
};
