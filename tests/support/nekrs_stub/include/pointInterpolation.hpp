// Test stand-in for NekRS 25.x pointInterpolation_t (gslib findpts): locates points in the
// mesh and evaluates volume fields there.
//
// Limits of the stand-in: it searches only the calling rank's elements (a point owned by
// another rank is CODE_NOT_FOUND here, where NekRS would find it there) and the elements must
// be axis-aligned boxes (mesh_t::stubElementBounds); evaluation is the Lagrange interpolant of
// the element's GLL nodal values, exact for polynomial fields of degree <= N. Like NekRS,
// find() and eval() are collective over the communicator, and eval() checks its offsets and
// buffer sizes.
#pragma once

#include "nekrsSys.hpp"
#include "mesh.h"

#include <vector>

namespace findpts {
static constexpr int CODE_INTERNAL = 0;
static constexpr int CODE_BORDER = 1;
static constexpr int CODE_NOT_FOUND = 2;

struct data_t {
  void resize(int npt) {
    code.assign(npt, CODE_NOT_FOUND);
    proc.assign(npt, 0);
    el.assign(npt, -1);
    r.assign(3 * npt, 0);
    dist2.assign(npt, 1e30);
  }
  std::vector<dlong> code;
  std::vector<dlong> proc;
  std::vector<dlong> el;
  std::vector<dfloat> r;
  std::vector<dfloat> dist2;
};
} // namespace findpts

class pointInterpolation_t {
public:
  static constexpr int CODE_INTERNAL = findpts::CODE_INTERNAL;
  static constexpr int CODE_BORDER = findpts::CODE_BORDER;
  static constexpr int CODE_NOT_FOUND = findpts::CODE_NOT_FOUND;

  enum class VerbosityLevel { None, Basic, Detailed };

  pointInterpolation_t(mesh_t* mesh_, MPI_Comm comm, bool mySession_ = true,
                       std::vector<int> bIntID = {}, double bb_tol = 0.05, double newton_tol = 0,
                       dlong localHashSize = 0, dlong globalHashSize = 0);
  ~pointInterpolation_t();

  void find(VerbosityLevel verbosity = VerbosityLevel::Basic, bool matchSession = false);

  void eval(dlong nFields, dlong inputFieldOffset, const occa::memory& o_in,
            dlong outputFieldOffset, occa::memory& o_out, dlong nPoints = -1,
            dlong findPtsOffset = 0);

  findpts::data_t& data() { return data_; }
  int numPoints() const { return nPoints; }

  void setPoints(const occa::memory& o_x, const occa::memory& o_y, const occa::memory& o_z);
  void setPoints(const std::vector<dfloat>& x, const std::vector<dfloat>& y,
                 const std::vector<dfloat>& z);

private:
  mesh_t* mesh = nullptr;
  MPI_Comm comm_ = MPI_COMM_NULL;
  findpts::data_t data_;
  bool findCalled = false;
  bool pointsAdded = false;
  int nPoints = 0;
  occa::memory _o_x, _o_y, _o_z;
};
