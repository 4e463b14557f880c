// Stand-in nrs_t: NekRS's last-step rule and the strain rate of a velocity field on box
// elements (spectral differentiation on the GLL nodes, exact for polynomials of degree <= N).
#include "nekrs_stub.hpp"

#include <cmath>
#include <stdexcept>

platform_t* platform = nullptr;

int nrs_t::setLastStep(double timeNew, int tstep, double elapsedTime) {
  double endTime = -1;
  platform->options.getArgs("END TIME", endTime);
  int numSteps = -1;
  platform->options.getArgs("NUMBER TIMESTEPS", numSteps);
  int last = 0;
  if (!platform->options.getArgs("STOP AT ELAPSED TIME").empty()) {
    double minutes = 0;
    platform->options.getArgs("STOP AT ELAPSED TIME", minutes);
    last = elapsedTime > 60.0 * minutes;
  } else if (endTime >= 0) {
    last = std::fabs(timeNew - endTime) < 1e-10 || timeNew > endTime;
  } else {
    last = tstep == numSteps;
  }
  lastStep = last;
  return last;
}

namespace {

// D[i][m] = l_m'(z_i): derivative of the Lagrange basis of the GLL points z at z_i.
std::vector<double> derivative_matrix(const mesh_t& mesh) {
  const int Nq = mesh.Nq;
  const double* z = mesh.gllz;
  std::vector<double> D(Nq * Nq, 0.0);
  for (int i = 0; i < Nq; ++i) {
    for (int m = 0; m < Nq; ++m) {
      // l_m'(z_i) = sum_{k != m} 1/(z_m - z_k) prod_{l != m, k} (z_i - z_l)/(z_m - z_l)
      double sum = 0.0;
      for (int k = 0; k < Nq; ++k) {
        if (k == m) continue;
        double term = 1.0 / (z[m] - z[k]);
        for (int l = 0; l < Nq; ++l) {
          if (l != m && l != k) term *= (z[i] - z[l]) / (z[m] - z[l]);
        }
        sum += term;
      }
      D[i * Nq + m] = sum;
    }
  }
  return D;
}

} // namespace

occa::memory nrs_t::strainRate(bool smooth) {
  return strainRate(fluid->fieldOffset, fluid->o_U, smooth);
}

// `smooth` (NekRS averages the element-wise values across shared nodes) is not needed here:
// the stand-in fields are globally smooth polynomials, whose element-wise derivatives agree.
occa::memory nrs_t::strainRate(dlong offset, const occa::memory& o_U, bool /*smooth*/) {
  const mesh_t& mesh = *meshV;
  if (offset < mesh.Nlocal || o_U.size() < 3 * static_cast<std::size_t>(offset)) {
    throw std::runtime_error("nrs_t::strainRate: field offset or velocity size too small");
  }
  const int Nq = mesh.Nq, Np = mesh.Np;
  const std::vector<double> D = derivative_matrix(mesh);
  std::vector<dfloat> U(3 * static_cast<std::size_t>(offset));
  o_U.copyTo(U.data(), U.size());
  // padding beyond Nlocal stays NaN, as the uninitialised memory of NekRS's pool
  occa::memory o_S = platform->device.malloc<dfloat>(6 * static_cast<std::size_t>(offset));
  std::vector<dfloat> S(6 * static_cast<std::size_t>(offset));
  o_S.copyTo(S.data());
  for (dlong e = 0; e < mesh.Nelements; ++e) {
    const auto& box = mesh.stubElementBounds[e];
    const double dr[3] = {2 / (box[1] - box[0]), 2 / (box[3] - box[2]), 2 / (box[5] - box[4])};
    for (int k = 0; k < Nq; ++k) {
      for (int j = 0; j < Nq; ++j) {
        for (int i = 0; i < Nq; ++i) {
          const dlong id = e * Np + i + j * Nq + k * Nq * Nq;
          double g[3][3] = {}; // g[a][b] = d u_a / d x_b
          for (int a = 0; a < 3; ++a) {
            const dfloat* u = &U[a * static_cast<std::size_t>(offset) + e * Np];
            for (int m = 0; m < Nq; ++m) {
              g[a][0] += D[i * Nq + m] * u[m + j * Nq + k * Nq * Nq] * dr[0];
              g[a][1] += D[j * Nq + m] * u[i + m * Nq + k * Nq * Nq] * dr[1];
              g[a][2] += D[k * Nq + m] * u[i + j * Nq + m * Nq * Nq] * dr[2];
            }
          }
          const double s[6] = {g[0][0], 0.5 * (g[0][1] + g[1][0]), 0.5 * (g[0][2] + g[2][0]),
                               g[1][1], 0.5 * (g[1][2] + g[2][1]), g[2][2]};
          for (int c = 0; c < 6; ++c) S[c * static_cast<std::size_t>(offset) + id] = s[c];
        }
      }
    }
  }
  o_S.copyFrom(S.data());
  return o_S;
}

namespace nekrs_stub {

nrs_t* build_nrs(mesh_t* mesh) {
  auto* nrs = new nrs_t();
  nrs->meshV = mesh;
  nrs->fieldOffset = mesh->fieldOffset;
  nrs->fluid = std::make_unique<fluidSolver_t>();
  nrs->fluid->mesh = mesh;
  nrs->fluid->fieldOffset = mesh->fieldOffset;
  const std::size_t velocity_size = 3 * static_cast<std::size_t>(mesh->fieldOffset);
  nrs->fluid->o_U = platform->device.malloc<dfloat>(velocity_size);
  nrs->bc = new bdryBase();
  return nrs;
}

} // namespace nekrs_stub
