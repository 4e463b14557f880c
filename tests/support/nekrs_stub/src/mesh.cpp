// Stand-in channel box: axis-aligned hexahedral elements with GLL nodes in NekRS's layouts.
#include "nekrs_stub.hpp"

#include <cmath>
#include <stdexcept>

namespace nekrs_stub {

dlong align_stride(dlong n) {
  const dlong page = 256 / sizeof(dfloat);
  return (n + page - 1) / page * page;
}

namespace {

// Legendre polynomial P_n(x) and its derivative.
void legendre(int n, double x, double& p, double& dp) {
  double p0 = 1.0, p1 = x;
  if (n == 0) {
    p = 1.0;
    dp = 0.0;
    return;
  }
  for (int k = 2; k <= n; ++k) {
    const double pk = ((2 * k - 1) * x * p1 - (k - 1) * p0) / k;
    p0 = p1;
    p1 = pk;
  }
  p = p1;
  dp = n * (x * p1 - p0) / (x * x - 1.0);
}

// Gauss-Lobatto-Legendre points (ascending) and weights of order n: the ends and the roots of
// P_n', by Newton iteration from the Chebyshev-Gauss-Lobatto points.
void gll(int n, std::vector<double>& z, std::vector<double>& w) {
  z.assign(n + 1, 0.0);
  w.assign(n + 1, 0.0);
  for (int i = 0; i <= n; ++i) {
    double x = -std::cos(M_PI * i / n);
    if (i > 0 && i < n) {
      for (int it = 0; it < 100; ++it) {
        // Newton on q(x) = (1 - x^2) P_n'(x), whose interior roots are the GLL points
        double p, dp;
        legendre(n, x, p, dp);
        const double q = (1 - x * x) * dp;
        const double dq = -n * (n + 1) * p; // Legendre's equation
        const double step = q / dq;
        x -= step;
        if (std::fabs(step) < 1e-16) break;
      }
    }
    z[i] = x;
    double p, dp;
    legendre(n, x, p, dp);
    w[i] = 2.0 / (n * (n + 1) * p * p);
  }
}

// NekRS's face tangents from the outward normal: t1 = x if the normal is +-z, else
// (-ny, nx, 0) / |.|; t2 = n x t1. On a channel's walls this gives t1 = +x on the wall y = -1
// (n = -y) and t1 = -x on the wall y = +1 (n = +y), t2 = +z on both.
void face_tangents(const double n[3], double t1[3], double t2[3]) {
  if (std::fabs(std::fabs(n[2]) - 1.0) < 1e-4) {
    t1[0] = 1.0;
    t1[1] = 0.0;
    t1[2] = 0.0;
  } else {
    const double mag = std::hypot(n[0], n[1]);
    t1[0] = -n[1] / mag;
    t1[1] = n[0] / mag;
    t1[2] = 0.0;
  }
  t2[0] = n[1] * t1[2] - n[2] * t1[1];
  t2[1] = n[2] * t1[0] - n[0] * t1[2];
  t2[2] = n[0] * t1[1] - n[1] * t1[0];
}

// Face f: the reference axis it is normal to (0: r, 1: s, 2: t) and its end (-1 or +1).
constexpr int kFaceAxis[6] = {2, 1, 0, 1, 0, 2};
constexpr int kFaceSide[6] = {-1, -1, 1, 1, -1, 1};

} // namespace

mesh_t* build_box(const BoxSpec& spec, int rank) {
  if (spec.order < 1) throw std::invalid_argument("stand-in box: order must be >= 1");
  auto* mesh = new mesh_t();
  mesh->N = spec.order;
  mesh->Nq = spec.order + 1;
  mesh->Np = mesh->Nq * mesh->Nq * mesh->Nq;
  mesh->Nfp = mesh->Nq * mesh->Nq;
  const int nx = spec.elements[0], ny = spec.elements[1], nz = spec.elements[2];
  mesh->Nelements = nx * ny * nz;
  mesh->Nlocal = mesh->Nelements * mesh->Np;
  mesh->fieldOffset = align_stride(mesh->Nlocal);
  gll(mesh->N, mesh->stubGllz, mesh->stubGllw);
  mesh->gllz = mesh->stubGllz.data();
  mesh->gllw = mesh->stubGllw.data();

  const int Nq = mesh->Nq, Np = mesh->Np, Nfp = mesh->Nfp, Nfaces = mesh->Nfaces;
  const double x0 = rank * spec.x_length;
  const double hx = spec.x_length / nx, hy = (spec.y_range[1] - spec.y_range[0]) / ny,
               hz = spec.z_length / nz;
  std::vector<dfloat> x(mesh->Nlocal), y(mesh->Nlocal), z(mesh->Nlocal), lmm(mesh->Nlocal);
  std::vector<dfloat> sgeo(static_cast<std::size_t>(mesh->Nelements) * Nfaces * Nfp * Nsgeo, 0.0);
  mesh->stubEToB.assign(mesh->Nelements * Nfaces, -1);
  mesh->stubVmapM.assign(static_cast<std::size_t>(mesh->Nelements) * Nfaces * Nfp, 0);

  for (int c = 0; c < nz; ++c) {
    for (int b = 0; b < ny; ++b) {
      for (int a = 0; a < nx; ++a) {
        const int e = a + nx * (b + ny * c);
        const std::array<double, 6> box = {x0 + a * hx, x0 + (a + 1) * hx,
                                           spec.y_range[0] + b * hy, spec.y_range[0] + (b + 1) * hy,
                                           c * hz, (c + 1) * hz};
        mesh->stubElementBounds.push_back(box);
        for (int k = 0; k < Nq; ++k) {
          for (int j = 0; j < Nq; ++j) {
            for (int i = 0; i < Nq; ++i) {
              const int n = e * Np + i + j * Nq + k * Nq * Nq;
              x[n] = box[0] + (mesh->gllz[i] + 1) / 2 * hx;
              y[n] = box[2] + (mesh->gllz[j] + 1) / 2 * hy;
              z[n] = box[4] + (mesh->gllz[k] + 1) / 2 * hz;
              lmm[n] = mesh->gllw[i] * mesh->gllw[j] * mesh->gllw[k] * hx * hy * hz / 8;
            }
          }
        }
        if (b == 0) mesh->stubEToB[1 + Nfaces * e] = spec.wall_id;
        if (b == ny - 1) mesh->stubEToB[3 + Nfaces * e] = spec.wall_id;

        const double scale[3] = {hx / 2, hy / 2, hz / 2}; // d(x, y, z) / d(r, s, t)
        for (int f = 0; f < Nfaces; ++f) {
          const int axis = kFaceAxis[f];
          double normal[3] = {0, 0, 0}, t1[3], t2[3];
          normal[axis] = kFaceSide[f];
          face_tangents(normal, t1, t2);
          // surface Jacobian: area element of the face per unit reference area
          const double sJ = scale[(axis + 1) % 3] * scale[(axis + 2) % 3];
          int m = 0;
          for (int local = 0; local < Np; ++local) { // face nodes in increasing volume order
            const int ijk[3] = {local % Nq, (local / Nq) % Nq, local / (Nq * Nq)};
            if (ijk[axis] != (kFaceSide[f] < 0 ? 0 : Nq - 1)) continue;
            const std::size_t row = (static_cast<std::size_t>(e) * Nfaces + f) * Nfp + m;
            mesh->stubVmapM[row] = e * Np + local;
            dfloat* g = &sgeo[row * Nsgeo];
            for (int d = 0; d < 3; ++d) {
              g[NXID + d] = normal[d];
              g[T1XID + d] = t1[d];
              g[T2XID + d] = t2[d];
            }
            const int fa = (axis + 1) % 3, fb = (axis + 2) % 3;
            g[SJID] = sJ;
            g[WSJID] = sJ * mesh->gllw[ijk[fa]] * mesh->gllw[ijk[fb]];
            ++m;
          }
          if (m != Nfp) throw std::logic_error("stand-in box: wrong face node count");
        }
      }
    }
  }
  mesh->EToB = mesh->stubEToB.data();
  mesh->vmapM = mesh->stubVmapM.data();
  mesh->o_x = occa::memory::allocate(mesh->Nlocal, occa::dtype::get<dfloat>());
  mesh->o_y = occa::memory::allocate(mesh->Nlocal, occa::dtype::get<dfloat>());
  mesh->o_z = occa::memory::allocate(mesh->Nlocal, occa::dtype::get<dfloat>());
  mesh->o_x.copyFrom(x.data());
  mesh->o_y.copyFrom(y.data());
  mesh->o_z.copyFrom(z.data());
  mesh->o_LMM = occa::memory::allocate(mesh->Nlocal, occa::dtype::get<dfloat>());
  mesh->o_LMM.copyFrom(lmm.data());
  mesh->o_sgeo = occa::memory::allocate(sgeo.size(), occa::dtype::get<dfloat>());
  mesh->o_sgeo.copyFrom(sgeo.data());
  mesh->o_vmapM = occa::memory::allocate(mesh->stubVmapM.size(), occa::dtype::get<dlong>());
  mesh->o_vmapM.copyFrom(mesh->stubVmapM.data());
  mesh->o_EToB = occa::memory::allocate(mesh->stubEToB.size(), occa::dtype::get<int>());
  mesh->o_EToB.copyFrom(mesh->stubEToB.data());
  return mesh;
}

} // namespace nekrs_stub
