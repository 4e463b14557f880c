// Stand-in only: NekRS's velocity boundary kernel on the wall-model faces, run on the host.
#pragma once

#include "nrs.hpp"

#include <vector>

namespace nekrs_stub {

// One wall face node: where it is, the traction the BC applies to the fluid there (in space:
// tr1 t1 + tr2 t2) and its surface quadrature weight (o_sgeo WSJ).
struct WallTraction {
  double position[3];
  double traction[3];
  double weight;
};

// What NekRS's boundary kernel does for a zeroDirichletN/udfNeumann velocity boundary with ID
// `wall_id`: for each node of each such face, a bcData (25.x) from o_sgeo (outward normal,
// tangents), the velocity at the node and bc->o_usrwrk, then the case's udfNeumann —
// udf/nekrs/wall_model.okl compiled as C++ with NEKRS_ML_USRWRK_FIELD as this program was
// built with. `time` is the time of the velocity field.
std::vector<WallTraction> wall_tractions(nrs_t* nrs, int wall_id, double time);

} // namespace nekrs_stub
