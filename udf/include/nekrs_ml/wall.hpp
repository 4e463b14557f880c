// Wall physics of the wall-model workflow: Reichardt's law of the wall, the wall shear stress it
// implies for a velocity sampled at height h, and the reproducer's synthetic off-wall velocity.
//
// Reichardt (1951), valid from the viscous sublayer through the log layer:
//   u+ = (1/kappa) ln(1 + kappa y+) + 7.8 (1 - exp(-y+/11) - (y+/11) exp(-y+/3)),  kappa = 0.41
// with u+ = u / u_tau and y+ = h u_tau / nu. The density is 1, so tau_w = u_tau^2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace nekrs_ml {

constexpr double kKarman = 0.41;

double reichardt_uplus(double yplus);

// The friction velocity u_tau with u / u_tau = u+(h u_tau / nu): safeguarded Newton (bracketed,
// bisection when a step leaves the bracket), relative tolerance 1e-12, at most 100 iterations.
// u <= 0 gives 0, a NaN u gives NaN. Throws ConfigError unless h > 0 and nu > 0.
double reichardt_friction_velocity(double u, double h, double nu);

// tau_w = u_tau^2 of the velocity u at height h.
double reichardt_wall_shear_stress(double u, double h, double nu);
// The same for n velocities (computed in double precision); `tau` may alias `u`.
void reichardt_wall_shear_stress(const double* u, std::size_t n, double h, double nu, double* tau);
void reichardt_wall_shear_stress(const float* u, std::size_t n, double h, double nu, float* tau);

// The wall law as a wall boundary condition: for n samples [u.t1, u.t2, u.n] (wall frame) at
// height h, the stress [tau.t1, tau.t2] of Reichardt's law at the tangential speed, along the
// tangential velocity; 0 where that speed is 0 or not finite. The coupling's fallback and the
// stand-in's resolved stress are this one function.
void wall_law_stress(const double* samples, std::size_t n, double h, double nu, double* tau);

// Standard normal deviates from std::mt19937_64 through an explicit Box-Muller transform (in
// pairs), seeded from (seed, stream) by SplitMix64: the same arguments give the same sequence on
// every platform whose libm rounds log/sin/cos alike (std::normal_distribution's algorithm
// differs between standard libraries).
class NormalDeviates {
public:
  NormalDeviates(std::uint64_t seed, std::uint64_t stream);
  double operator()();

private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// The reproducer's stand-in for the solver's off-wall velocity: per wall point, the streamwise
// velocity at height h of a channel of half-height 1 at friction Reynolds number re_tau,
//   u_i(t) = U (1 + s_i) + u'_i(t),  clipped at a small positive floor,
// with U = u_tau u+(h u_tau / nu), u_tau = re_tau nu; s_i a fixed spatial modulation (rms 5 %)
// drawn once, and u'_i an AR(1) process u' <- a u' + sqrt(1 - a^2) sigma xi with a =
// correlation and sigma = fluctuation U, started from its stationary distribution.
// The normal deviates come from std::mt19937_64 (seeded from (seed, rank) by SplitMix64)
// through an explicit Box-Muller transform rather than std::normal_distribution, whose
// algorithm differs between standard libraries: the same arguments give bit-identical data
// on every platform whose libm rounds log/sin/cos alike (glibc: always).
class ChannelWallSampler {
public:
  ChannelWallSampler(std::size_t points, double re_tau, double nu, double h, double fluctuation,
                     double correlation, std::uint64_t seed, int rank);

  // One solver step: advances every point's fluctuation.
  void advance();

  // Writes the current velocities (inputs [points, 1]) and their Reichardt wall shear stress
  // (targets [points, 1]).
  void fill(float* inputs, float* targets) const;
  void fill(double* inputs, double* targets) const;

  std::size_t points() const { return mean_.size(); }
  double mean_velocity() const { return mean_velocity_; }
  double friction_velocity() const { return friction_velocity_; }
  double height() const { return h_; }
  double viscosity() const { return nu_; }

private:
  double velocity(std::size_t point) const;
  template <typename T> void write(T* inputs, T* targets) const;

  double nu_, h_, correlation_;
  double friction_velocity_, mean_velocity_, sigma_, floor_;
  NormalDeviates normal_;
  std::vector<double> mean_;        // U (1 + s_i)
  std::vector<double> fluctuation_; // u'_i
};

} // namespace nekrs_ml
