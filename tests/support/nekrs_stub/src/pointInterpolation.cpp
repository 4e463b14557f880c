// Stand-in point interpolation on the rank's box elements (see pointInterpolation.hpp).
#include "pointInterpolation.hpp"
#include "platform.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace {

void fail(const std::string& text) { throw std::runtime_error("pointInterpolation_t::" + text); }

// Lagrange basis of the GLL points z (Nq of them) at r.
void lagrange(const dfloat* z, int Nq, double r, double* l) {
  for (int m = 0; m < Nq; ++m) {
    double v = 1.0;
    for (int k = 0; k < Nq; ++k) {
      if (k != m) v *= (r - z[k]) / (z[m] - z[k]);
    }
    l[m] = v;
  }
}

} // namespace

pointInterpolation_t::pointInterpolation_t(mesh_t* mesh_, MPI_Comm comm, bool, std::vector<int>,
                                           double, double, dlong, dlong)
    : mesh(mesh_), comm_(comm) {
  // NekRS accepts only the solver's communicator (or its parent)
  bool supported = false;
  for (MPI_Comm allowed : {platform->comm.mpiComm(), platform->comm.mpiCommParent()}) {
    int same = MPI_UNEQUAL;
    MPI_Comm_compare(comm, allowed, &same);
    supported |= same != MPI_UNEQUAL;
  }
  if (!supported) fail("pointInterpolation_t: communicator must be platform->comm.mpiComm()");
}

pointInterpolation_t::~pointInterpolation_t() {
  // gslib frees its communicator here: after MPI_Finalize that is an error (Open MPI aborts).
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    std::fprintf(stderr, "pointInterpolation_t destroyed after MPI_Finalize\n");
    std::abort();
  }
}

void pointInterpolation_t::setPoints(const occa::memory& o_x, const occa::memory& o_y,
                                     const occa::memory& o_z) {
  if (o_y.size() != o_x.size() || o_z.size() != o_x.size()) fail("setPoints: x, y, z sizes differ");
  nPoints = static_cast<int>(o_x.size());
  pointsAdded = true;
  findCalled = false;
  data_.resize(nPoints);
  _o_x = o_x;
  _o_y = o_y;
  _o_z = o_z;
}

void pointInterpolation_t::setPoints(const std::vector<dfloat>& x, const std::vector<dfloat>& y,
                                     const std::vector<dfloat>& z) {
  auto o_x = platform->device.malloc<dfloat>(x.size());
  auto o_y = platform->device.malloc<dfloat>(y.size());
  auto o_z = platform->device.malloc<dfloat>(z.size());
  o_x.copyFrom(x.data());
  o_y.copyFrom(y.data());
  o_z.copyFrom(z.data());
  setPoints(o_x, o_y, o_z);
}

void pointInterpolation_t::find(VerbosityLevel, bool) {
  if (!pointsAdded) fail("find: called without any points added");
  std::vector<dfloat> x(nPoints), y(nPoints), z(nPoints);
  _o_x.copyTo(x.data(), nPoints);
  _o_y.copyTo(y.data(), nPoints);
  _o_z.copyTo(z.data(), nPoints);
  int rank = 0;
  MPI_Comm_rank(comm_, &rank);
  const double tol = 1e-12;
  long long found = 0;
  for (int p = 0; p < nPoints; ++p) {
    const double q[3] = {x[p], y[p], z[p]};
    data_.code[p] = CODE_NOT_FOUND;
    for (dlong e = 0; e < mesh->Nelements; ++e) {
      const auto& box = mesh->stubElementBounds[e];
      bool inside = true, border = false;
      double r[3];
      for (int d = 0; d < 3; ++d) {
        const double lo = box[2 * d], hi = box[2 * d + 1], span = hi - lo;
        if (q[d] < lo - tol * span || q[d] > hi + tol * span) inside = false;
        r[d] = 2 * (q[d] - lo) / span - 1;
      }
      if (!inside) continue;
      // on the boundary of the local box (NekRS: of the mesh) -> CODE_BORDER
      for (int d = 0; d < 3; ++d) border |= std::fabs(std::fabs(r[d]) - 1) < 1e-12;
      data_.code[p] = border ? CODE_BORDER : CODE_INTERNAL;
      data_.el[p] = e;
      data_.proc[p] = rank;
      data_.dist2[p] = 0;
      for (int d = 0; d < 3; ++d) data_.r[3 * p + d] = r[d];
      ++found;
      break;
    }
  }
  // collective, as gslib's findpts
  MPI_Allreduce(MPI_IN_PLACE, &found, 1, MPI_LONG_LONG, MPI_SUM, comm_);
  findCalled = true;
}

void pointInterpolation_t::eval(dlong nFields, dlong inputFieldOffset, const occa::memory& o_in,
                                dlong outputFieldOffset, occa::memory& o_out, dlong nPointsIn,
                                dlong findPtsOffset) {
  if (nFields == 1) inputFieldOffset = mesh->Nlocal;
  const dlong n = nPointsIn > -1 ? nPointsIn : nPoints;
  if (nFields == 1) outputFieldOffset = n;
  if (!findCalled) fail("eval: find has not been called prior to eval");
  if (nFields > 1 && mesh->Nlocal > inputFieldOffset) {
    fail("eval: inputFieldOffset (" + std::to_string(inputFieldOffset) +
         ") is less than mesh->Nlocal (" + std::to_string(mesh->Nlocal) + ")");
  }
  if (nFields > 1 && n > outputFieldOffset) {
    fail("eval: outputFieldOffset (" + std::to_string(outputFieldOffset) +
         ") is less than nPoints (" + std::to_string(n) + ")");
  }
  if (o_in.byte_size() < nFields * inputFieldOffset * sizeof(dfloat)) {
    fail("eval: input size is smaller than expected");
  }
  const std::size_t out_bytes = nFields * outputFieldOffset * sizeof(dfloat);
  if ((o_out.byte_size() == 0 && n) || o_out.byte_size() < out_bytes) {
    fail("eval: output size is smaller than expected");
  }
  if (findPtsOffset + n > nPoints) fail("eval: points beyond those set");

  const int Nq = mesh->Nq, Np = mesh->Np;
  std::vector<dfloat> in(static_cast<std::size_t>(nFields) * inputFieldOffset);
  o_in.copyTo(in.data(), in.size());
  std::vector<dfloat> out(o_out.size());
  o_out.copyTo(out.data(), out.size());
  std::vector<double> lr(Nq), ls(Nq), lt(Nq);
  for (dlong p = 0; p < n; ++p) {
    const dlong q = p + findPtsOffset;
    if (data_.code[q] == CODE_NOT_FOUND) continue; // gslib leaves those outputs alone
    const dlong e = data_.el[q];
    lagrange(mesh->gllz, Nq, data_.r[3 * q + 0], lr.data());
    lagrange(mesh->gllz, Nq, data_.r[3 * q + 1], ls.data());
    lagrange(mesh->gllz, Nq, data_.r[3 * q + 2], lt.data());
    for (dlong f = 0; f < nFields; ++f) {
      const dfloat* u = &in[f * static_cast<std::size_t>(inputFieldOffset) + e * Np];
      double value = 0;
      for (int k = 0; k < Nq; ++k) {
        for (int j = 0; j < Nq; ++j) {
          for (int i = 0; i < Nq; ++i) value += lr[i] * ls[j] * lt[k] * u[i + j * Nq + k * Nq * Nq];
        }
      }
      out[f * static_cast<std::size_t>(outputFieldOffset) + p] = value;
    }
  }
  o_out.copyFrom(out.data(), out.size());
  MPI_Barrier(comm_); // collective, as gslib's findpts_eval
}
