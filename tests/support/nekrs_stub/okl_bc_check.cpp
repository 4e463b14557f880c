// The wall-model boundary condition udf/nekrs/wall_model.okl compiled as C++ (with the
// stand-in bcData of NekRS 25.x, or of 24.x when built with NEKRS_ML_NEKRS_VERSION=24) and
// compared with nekrs_ml::wall_model_traction, the traction the core documents and the Python
// side tests: usrwrk fields F = NEKRS_ML_USRWRK_FIELD and F + 1 hold (tau.t1, tau.t2) of the
// wall node, and the traction on the fluid must be their opposite, -(tau.t1 t1 + tau.t2 t2) in
// space, whatever the velocity at the wall node. Swept over stress vectors (streamwise,
// spanwise, both, either sign, zero), wall frames (both channel walls as NekRS orients them,
// and random ones) and wall velocities (zero, purely normal, NaN, slip in other directions than
// the stress), with F = 0 by default (the build also compiles it with F = 2); 25.x also for
// other fields' Neumann conditions, which it must leave alone.
// Exits 1 on a mismatch; prints the number of cases checked.
#include <cmath>
#include <cstdio>
#include <cctype>
#include <cstring>
#include <random>
#include <vector>

#if NEKRS_ML_NEKRS_VERSION >= 25
#include "app/nrs/bdry/bcData.h"
#else
#include "nrs/bdry/bcData.h"
#endif

// OKL math builtins as the serial backend sees them.
using std::fabs;
using std::sqrt;

#include "nekrs_ml/nekrs/wall_model.okl"

#include "nekrs_ml/wall_points.hpp"

#ifndef NEKRS_ML_USRWRK_FIELD
#error "wall_model.okl defines NEKRS_ML_USRWRK_FIELD"
#endif

namespace {

bool nekrs_ml_field_is(const char* a, const char* b) {
  for (; *a && *b; ++a, ++b) {
    const int ca = std::tolower(static_cast<unsigned char>(*a));
    const int cb = std::tolower(static_cast<unsigned char>(*b));
    if (ca != cb) return false;
  }
  return *a == *b;
}

struct Frame {
  double t1[3], t2[3], n[3]; // n: outward normal
};

// The version-specific parts of bcData and of the call NekRS makes.
#if NEKRS_ML_NEKRS_VERSION >= 25
void set_wall_node(bcData& data, int idx, const double u[3]) {
  data.idxVol = idx;
  data.uxFluid = u[0], data.uyFluid = u[1], data.uzFluid = u[2];
}
// udfNeumann is called for every field with a Neumann condition.
bool call_bc(bcData& data, const char* field_name) {
  std::snprintf(data.fieldName, sizeof(data.fieldName), "%s", field_name);
  udfNeumann(&data);
  return true;
}
#else
void set_wall_node(bcData& data, int idx, const double u[3]) {
  data.idM = idx;
  data.u = u[0], data.v = u[1], data.w = u[2];
}
// codedFixedGradientVelocity is called for the velocity only.
bool call_bc(bcData& data, const char* field_name) {
  if (nekrs_ml_field_is(field_name, "fluid velocity")) codedFixedGradientVelocity(&data);
  return nekrs_ml_field_is(field_name, "fluid velocity");
}
#endif

int failures = 0;
int cases = 0;

void report(const char* what, double got, double expected, const double tau[2],
            const double u[3]) {
  if (++failures <= 10) {
    std::printf("mismatch %s: got %.17g, expected %.17g (tau %g %g, u = %g %g %g)\n", what, got,
                expected, tau[0], tau[1], u[0], u[1], u[2]);
  }
}

bool close(double a, double b) {
  return std::fabs(a - b) <= 1e-13 * std::fmax(1e-300, std::fmax(std::fabs(a), std::fabs(b))) ||
         a == b;
}

// One wall node: usrwrk holds tau[0] at [F * fieldOffset + idx] and tau[1] at
// [(F + 1) * fieldOffset + idx]; every other entry is NaN, so that a wrong index shows up as a
// NaN traction.
void check(const Frame& f, const double u[3], const double tau[2], const char* field_name) {
  const int field_offset = 37, idx = 11;
  std::vector<dfloat> usrwrk((NEKRS_ML_USRWRK_FIELD + 3) * field_offset, std::nan(""));
  usrwrk[NEKRS_ML_USRWRK_FIELD * field_offset + idx] = tau[0];
  usrwrk[(NEKRS_ML_USRWRK_FIELD + 1) * field_offset + idx] = tau[1];

  bcData data;
  std::memset(&data, 0, sizeof(data));
  set_wall_node(data, idx, u);
  data.fieldOffset = field_offset;
  data.id = 1;
  data.nx = f.n[0], data.ny = f.n[1], data.nz = f.n[2];
  data.t1x = f.t1[0], data.t1y = f.t1[1], data.t1z = f.t1[2];
  data.t2x = f.t2[0], data.t2y = f.t2[1], data.t2z = f.t2[2];
  data.usrwrk = usrwrk.data();
  const double untouched = 12345.0;
  data.tr1 = data.tr2 = untouched;

  if (!call_bc(data, field_name)) return; // 24.x: not called for other fields
  ++cases;

  const bool velocity = nekrs_ml_field_is(field_name, "fluid velocity");
  if (!velocity) { // other fields' Neumann conditions are left alone
    if (data.tr1 != untouched || data.tr2 != untouched) {
      report("non-velocity field", data.tr1, untouched, tau, u);
    }
    return;
  }
  double tr1 = 0, tr2 = 0;
  nekrs_ml::wall_model_traction(tau[0], tau[1], tr1, tr2);
  if (!close(data.tr1, tr1)) report("tr1", data.tr1, tr1, tau, u);
  if (!close(data.tr2, tr2)) report("tr2", data.tr2, tr2, tau, u);
  // in space: the traction on the fluid is minus the stored stress vector
  for (int d = 0; d < 3; ++d) {
    const double traction = data.tr1 * f.t1[d] + data.tr2 * f.t2[d];
    const double stress = tau[0] * f.t1[d] + tau[1] * f.t2[d];
    if (!close(traction, -stress)) report("traction in space", traction, -stress, tau, u);
  }
}

Frame random_frame(std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  Frame f;
  double a[3], b[3];
  for (int d = 0; d < 3; ++d) a[d] = normal(rng), b[d] = normal(rng);
  const double na = std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
  for (int d = 0; d < 3; ++d) f.n[d] = a[d] / na;
  const double dot = b[0] * f.n[0] + b[1] * f.n[1] + b[2] * f.n[2];
  for (int d = 0; d < 3; ++d) b[d] -= dot * f.n[d];
  const double nb = std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
  for (int d = 0; d < 3; ++d) f.t1[d] = b[d] / nb;
  f.t2[0] = f.n[1] * f.t1[2] - f.n[2] * f.t1[1];
  f.t2[1] = f.n[2] * f.t1[0] - f.n[0] * f.t1[2];
  f.t2[2] = f.n[0] * f.t1[1] - f.n[1] * f.t1[0];
  return f;
}

} // namespace

int main() {
  // The channel walls as NekRS orients them: bottom (n = -y) t1 = +x, top (n = +y) t1 = -x.
  const Frame bottom = {{1, 0, 0}, {0, 0, 1}, {0, -1, 0}};
  const Frame top = {{-1, 0, 0}, {0, 0, 1}, {0, 1, 0}};
  std::vector<Frame> frames = {bottom, top};
  std::mt19937_64 rng(2026);
  for (int i = 0; i < 20; ++i) frames.push_back(random_frame(rng));

  // (tau.t1, tau.t2): streamwise only, spanwise only, both, either sign, zero, tiny and large
  const std::vector<std::vector<double>> taus = {
      {0.0, 0.0}, {0.0025, 0.0}, {-0.0025, 0.0}, {0.0, 0.0025}, {0.0, -1e-3},
      {0.0025, 8e-4}, {-0.002, -0.003}, {1e-9, -2e-9}, {40.0, -3.0}};
  std::vector<std::vector<double>> velocities = {
      {0, 0, 0},        // no slip at the wall node
      {0, 0.7, 0},      // normal to the channel walls: no tangential slip there
      {std::nan(""), 0, 0}, // the velocity plays no part in the traction
      {1, 0, 0}, {-1, 0, 0}, {0, 0, 1}, {0.3, -0.2, -0.4}, {1e-12, 0, 3e-12}, {25, 1, -7}};
  std::uniform_real_distribution<double> uniform(-2.0, 2.0);
  for (int i = 0; i < 30; ++i) velocities.push_back({uniform(rng), uniform(rng), uniform(rng)});

  for (const Frame& f : frames) {
    for (const auto& tau : taus) {
      for (const auto& u : velocities) {
        check(f, u.data(), tau.data(), "fluid velocity");
        check(f, u.data(), tau.data(), "Fluid Velocity"); // NekRS compares field names case-insensitively
      }
    }
  }
  const double unit[2] = {1.0, 0.5};
  check(bottom, velocities[5].data(), unit, "scalar00");
  check(bottom, velocities[5].data(), unit, "geom");

  std::printf("checked %d cases (NekRS %d API, usrwrk field %d): %d mismatches\n", cases,
              NEKRS_ML_NEKRS_VERSION, NEKRS_ML_USRWRK_FIELD, failures);
  return failures ? 1 : 0;
}
