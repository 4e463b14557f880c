// nekrs_stub::wall_tractions: the OKL boundary function of udf/nekrs/wall_model.okl compiled as
// C++ against the stand-in 25.x bcData and called as NekRS's boundary kernel calls it.
#include "boundary_kernel.hpp"

#include "app/nrs/bdry/bcData.h"

#include <cstdio>
#include <cstring>

#include "nekrs_ml/nekrs/wall_model.okl"

namespace nekrs_stub {

std::vector<WallTraction> wall_tractions(nrs_t* nrs, int wall_id, double time) {
  mesh_t* mesh = nrs->meshV;
  const dlong offset = nrs->fluid->fieldOffset;
  std::vector<dfloat> U(3 * static_cast<std::size_t>(offset));
  nrs->fluid->o_U.copyTo(U.data(), U.size());
  deviceMemory<dfloat>& o_usrwrk = platform->app->bc->o_usrwrk;
  std::vector<dfloat> usrwrk(o_usrwrk.size());
  if (!usrwrk.empty()) o_usrwrk.copyTo(usrwrk);
  std::vector<dfloat> sgeo(mesh->o_sgeo.size());
  mesh->o_sgeo.copyTo(sgeo.data(), sgeo.size());
  auto [x, y, z] = mesh->xyzHost();

  std::vector<WallTraction> result;
  for (dlong e = 0; e < mesh->Nelements; ++e) {
    for (int f = 0; f < mesh->Nfaces; ++f) {
      if (mesh->EToB[f + mesh->Nfaces * e] != wall_id) continue;
      for (int m = 0; m < mesh->Nfp; ++m) {
        const std::size_t row = (static_cast<std::size_t>(e) * mesh->Nfaces + f) * mesh->Nfp + m;
        const dlong idx = mesh->vmapM[row];
        const dfloat* g = &sgeo[row * mesh->Nsgeo];
        bcData bc;
        std::memset(&bc, 0, sizeof(bc));
        std::snprintf(bc.fieldName, sizeof(bc.fieldName), "%s", "fluid velocity");
        bc.idxVol = idx;
        bc.fieldOffset = offset;
        bc.id = wall_id;
        bc.time = time;
        bc.x = x[idx], bc.y = y[idx], bc.z = z[idx];
        bc.nx = g[NXID], bc.ny = g[NYID], bc.nz = g[NZID];
        bc.t1x = g[T1XID], bc.t1y = g[T1YID], bc.t1z = g[T1ZID];
        bc.t2x = g[T2XID], bc.t2y = g[T2YID], bc.t2z = g[T2ZID];
        bc.uxFluid = U[idx], bc.uyFluid = U[offset + idx], bc.uzFluid = U[2 * offset + idx];
        bc.usrwrk = usrwrk.data();
        udfNeumann(&bc);
        WallTraction node{{x[idx], y[idx], z[idx]},
                          {bc.tr1 * bc.t1x + bc.tr2 * bc.t2x, bc.tr1 * bc.t1y + bc.tr2 * bc.t2y,
                           bc.tr1 * bc.t1z + bc.tr2 * bc.t2z},
                          g[WSJID]};
        result.push_back(node);
      }
    }
  }
  return result;
}

} // namespace nekrs_stub
