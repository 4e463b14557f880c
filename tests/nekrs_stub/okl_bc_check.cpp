// The wall-model boundary condition udf/nekrs/wall_model.okl compiled as C++ (with the
// stand-in bcData of NekRS 25.x, or of 24.x when built with NEKRS_ML_NEKRS_VERSION=24) and
// compared with nekrs_ml::wall_model_traction, the traction the core documents and the Python
// side tests: over a sweep of |tau| (also negative values in usrwrk, whose magnitude counts),
// wall frames (both channel walls as NekRS orients them, and random ones), slip velocities
// (also zero slip, a purely normal velocity and NaN), and with the
// usrwrk field NEKRS_ML_USRWRK_FIELD (0 by default; the build also compiles it with 2); 25.x
// also for other fields' Neumann conditions, which it must leave alone.
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

void report(const char* what, double got, double expected, double tau, const double u[3]) {
  if (++failures <= 10) {
    std::printf("mismatch %s: got %.17g, expected %.17g (tau %g, u = %g %g %g)\n", what, got,
                expected, tau, u[0], u[1], u[2]);
  }
}

bool close(double a, double b) {
  return std::fabs(a - b) <= 1e-13 * std::fmax(1e-300, std::fmax(std::fabs(a), std::fabs(b))) ||
         a == b;
}

// One wall node: usrwrk holds `tau` at [field * fieldOffset + idx]; every other entry is NaN,
// so that a wrong index shows up as a NaN traction.
void check(const Frame& f, const double u[3], double tau, const char* field_name) {
  const int field_offset = 37, idx = 11;
  std::vector<dfloat> usrwrk((NEKRS_ML_USRWRK_FIELD + 2) * field_offset, std::nan(""));
  usrwrk[NEKRS_ML_USRWRK_FIELD * field_offset + idx] = tau;

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
  const double s1 = u[0] * f.t1[0] + u[1] * f.t1[1] + u[2] * f.t1[2];
  const double s2 = u[0] * f.t2[0] + u[1] * f.t2[1] + u[2] * f.t2[2];
  double tr1 = 0, tr2 = 0;
  nekrs_ml::wall_model_traction(tau, s1, s2, tr1, tr2);
  if (!close(data.tr1, tr1)) report("tr1", data.tr1, tr1, tau, u);
  if (!close(data.tr2, tr2)) report("tr2", data.tr2, tr2, tau, u);
  // the traction opposes the slip and has the magnitude |tau|
  const double magnitude = std::hypot(data.tr1, data.tr2);
  const double slip = std::hypot(s1, s2);
  const double along_slip = data.tr1 * s1 + data.tr2 * s2;
  if (slip > 0 && !close(magnitude, std::fabs(tau))) {
    report("|tr|", magnitude, std::fabs(tau), tau, u);
  }
  if (slip > 0 && along_slip > 0) report("tr . slip", along_slip, 0, tau, u);
  if (slip == 0 && (data.tr1 != 0 || data.tr2 != 0)) report("zero slip", magnitude, 0, tau, u);
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

  const double taus[] = {0.0, 1e-6, 0.0025, 1.0, 40.0, -0.0025};
  std::vector<std::vector<double>> velocities = {
      {0, 0, 0},        // zero slip
      {0, 0.7, 0},      // normal to the channel walls: zero slip there
      {std::nan(""), 0, 0}, // no direction: no traction
      {1, 0, 0}, {-1, 0, 0}, {0, 0, 1}, {0.3, -0.2, -0.4}, {1e-12, 0, 3e-12}, {25, 1, -7}};
  std::uniform_real_distribution<double> uniform(-2.0, 2.0);
  for (int i = 0; i < 30; ++i) velocities.push_back({uniform(rng), uniform(rng), uniform(rng)});

  for (const Frame& f : frames) {
    for (double tau : taus) {
      for (const auto& u : velocities) {
        check(f, u.data(), tau, "fluid velocity");
        check(f, u.data(), tau, "Fluid Velocity"); // NekRS compares field names case-insensitively
      }
    }
  }
  check(bottom, velocities[5].data(), 1.0, "scalar00");
  check(bottom, velocities[5].data(), 1.0, "geom");

  std::printf("checked %d cases (NekRS %d API, usrwrk field %d): %d mismatches\n", cases,
              NEKRS_ML_NEKRS_VERSION, NEKRS_ML_USRWRK_FIELD, failures);
  return failures ? 1 : 0;
}
