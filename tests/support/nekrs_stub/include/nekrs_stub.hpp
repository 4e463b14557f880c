// Stand-in only (no NekRS counterpart): what the test driver uses to set up the stand-in
// NekRS objects — a channel box of spectral elements per rank and the nrs_t on it.
#pragma once

#include "nrs.hpp"

namespace nekrs_stub {

// Field stride of NekRS (alignStride: whole 256-byte pages of dfloat).
dlong align_stride(dlong n);

struct BoxSpec {
  int order = 2;                      // polynomial order N
  int elements[3] = {2, 2, 2};        // elements per rank along x, y, z
  double x_length = 2.0;              // per rank: rank r owns x in [r * x_length, (r+1) * x_length]
  double y_range[2] = {-1.0, 1.0};    // walls at both ends
  double z_length = 2.0;
  int wall_id = 1;                    // boundary ID of the faces at y = y_range[0], y_range[1]
                                      // (-1: none, as on a rank that touches no wall)
};

// The box of `rank`: GLL nodes, EToB (wall_id on the y faces at the walls, -1 elsewhere: the
// x and z ends are periodic), vmapM, o_sgeo (outward normals and NekRS's tangents, surface
// Jacobians and weights), o_x/o_y/o_z.
mesh_t* build_box(const BoxSpec& spec, int rank);

// nrs_t on `mesh` with fluid->o_U (3 * fieldOffset, uninitialised) and platform->app->bc.
nrs_t* build_nrs(mesh_t* mesh);

} // namespace nekrs_stub
