// Reichardt's law of the wall and the reproducer's synthetic off-wall velocity (wall.hpp).
#include "nekrs_ml/wall.hpp"

#include "nekrs_ml/errors.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace nekrs_ml {
namespace {

constexpr double kB = 7.8;
constexpr double kTolerance = 1e-12; // relative, on u_tau
constexpr int kMaxIterations = 100;
constexpr double kSpatialRms = 0.05;     // rms of the fixed per-point modulation s_i
constexpr double kVelocityFloor = 1e-3;  // of the mean velocity: keeps u > 0
constexpr double kTwoPi = 6.283185307179586476925286766559;

// d u+ / d y+.
double reichardt_duplus(double yplus) {
  return 1.0 / (1.0 + kKarman * yplus) +
         kB * (std::exp(-yplus / 11.0) / 11.0 - std::exp(-yplus / 3.0) / 11.0 +
               yplus / 33.0 * std::exp(-yplus / 3.0));
}

std::string text(double value) {
  char out[32];
  std::snprintf(out, sizeof out, "%.17g", value);
  return out;
}

void check_geometry(double h, double nu) {
  if (!(h > 0.0) || !std::isfinite(h)) {
    throw ConfigError("wall model: sample height h = " + text(h) +
                      " must be a finite number > 0 (option sampleHeight)");
  }
  if (!(nu > 0.0) || !std::isfinite(nu)) {
    throw ConfigError("wall model: viscosity nu = " + text(nu) +
                      " must be a finite number > 0");
  }
}

// Friction velocity for one u, once h and nu are known to be valid.
double solve_friction_velocity(double u, double h, double nu) {
  if (std::isnan(u)) return u;
  if (u <= 0.0) return 0.0; // no flow, or reversed flow the law does not describe: no stress
  if (std::isinf(u)) return u;
  const double c = h / nu; // y+ = c u_tau
  // g(u_tau) = u_tau u+(c u_tau) - u grows monotonically from -u at u_tau = 0.
  const auto residual = [&](double ut) { return ut * reichardt_uplus(c * ut) - u; };
  const auto slope = [&](double ut) {
    const double yplus = c * ut;
    return reichardt_uplus(yplus) + yplus * reichardt_duplus(yplus);
  };
  // Bracket the root, starting from the viscous-sublayer estimate (u+ = y+).
  double lo = 0.0;
  double hi = std::sqrt(u / c);
  while (residual(hi) < 0.0) {
    lo = hi;
    hi *= 2.0;
  }
  double ut = hi; // Newton from the upper end; the bracket catches any overshoot
  for (int iteration = 0; iteration < kMaxIterations; ++iteration) {
    const double r = residual(ut);
    if (r == 0.0) return ut;
    (r < 0.0 ? lo : hi) = ut;
    double next = ut - r / slope(ut);
    if (!(next > lo && next < hi)) next = 0.5 * (lo + hi); // a step left the bracket: bisect
    if (std::abs(next - ut) <= kTolerance * next) return next;
    ut = next;
  }
  return ut;
}

template <typename T>
void shear_stress(const T* u, std::size_t n, double h, double nu, T* tau) {
  check_geometry(h, nu);
  for (std::size_t i = 0; i < n; ++i) {
    const double ut = solve_friction_velocity(static_cast<double>(u[i]), h, nu);
    tau[i] = static_cast<T>(ut * ut);
  }
}

// SplitMix64 (Steele, Lea & Flood 2014): a fixed, portable mix of (seed, rank) into the
// engine seed, so that ranks get unrelated streams and std::hash (implementation-defined)
// plays no part.
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

void check_sampler_options(double re_tau, double fluctuation, double correlation) {
  if (!(re_tau > 0.0)) {
    throw ConfigError("[REPRODUCER] reTau = " + text(re_tau) + ": must be > 0");
  }
  if (!(fluctuation >= 0.0)) {
    throw ConfigError("[REPRODUCER] fluctuation = " + text(fluctuation) +
                      ": must be >= 0");
  }
  if (!(correlation >= 0.0 && correlation <= 1.0)) {
    throw ConfigError("[REPRODUCER] correlation = " + text(correlation) +
                      ": must be between 0 and 1");
  }
}

} // namespace

double reichardt_uplus(double yplus) {
  return std::log1p(kKarman * yplus) / kKarman +
         kB * (1.0 - std::exp(-yplus / 11.0) - yplus / 11.0 * std::exp(-yplus / 3.0));
}

double reichardt_friction_velocity(double u, double h, double nu) {
  check_geometry(h, nu);
  return solve_friction_velocity(u, h, nu);
}

double reichardt_wall_shear_stress(double u, double h, double nu) {
  const double ut = reichardt_friction_velocity(u, h, nu);
  return ut * ut;
}

void wall_law_stress(const double* samples, std::size_t n, double h, double nu, double* tau) {
  for (std::size_t i = 0; i < n; ++i) {
    const double u1 = samples[3 * i], u2 = samples[3 * i + 1];
    const double speed = std::hypot(u1, u2);
    double t1 = 0.0, t2 = 0.0;
    if (speed > 0.0 && std::isfinite(speed)) {
      const double magnitude = reichardt_wall_shear_stress(speed, h, nu);
      t1 = magnitude * u1 / speed;
      t2 = magnitude * u2 / speed;
    }
    tau[2 * i] = t1;
    tau[2 * i + 1] = t2;
  }
}

void reichardt_wall_shear_stress(const double* u, std::size_t n, double h, double nu, double* tau) {
  shear_stress(u, n, h, nu, tau);
}

void reichardt_wall_shear_stress(const float* u, std::size_t n, double h, double nu, float* tau) {
  shear_stress(u, n, h, nu, tau);
}

// --- ChannelWallSampler ----------------------------------------------------------------------
ChannelWallSampler::ChannelWallSampler(std::size_t points, double re_tau, double nu, double h,
                                       double fluctuation, double correlation, std::uint64_t seed,
                                       int rank)
    : nu_(nu), h_(h), correlation_(correlation),
      normal_(seed, static_cast<std::uint64_t>(rank)),
      mean_(points), fluctuation_(points) {
  check_geometry(h, nu);
  check_sampler_options(re_tau, fluctuation, correlation);
  friction_velocity_ = re_tau * nu; // channel half-height 1: re_tau = u_tau / nu
  mean_velocity_ = friction_velocity_ * reichardt_uplus(h * friction_velocity_ / nu);
  sigma_ = fluctuation * mean_velocity_;
  floor_ = kVelocityFloor * mean_velocity_;
  for (double& mean : mean_) mean = mean_velocity_ * (1.0 + kSpatialRms * normal_());
  for (double& value : fluctuation_) value = sigma_ * normal_(); // stationary from the start
}

// --- NormalDeviates --------------------------------------------------------------------------
NormalDeviates::NormalDeviates(std::uint64_t seed, std::uint64_t stream)
    : engine_(splitmix64(splitmix64(seed) ^ stream)) {}

double NormalDeviates::operator()() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // Two uniforms from the top 53 bits; u1 in (0, 1] so that log(u1) is finite.
  const double u1 = static_cast<double>((engine_() >> 11) + 1) * 0x1.0p-53;
  const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
  const double radius = std::sqrt(-2.0 * std::log(u1));
  spare_ = radius * std::sin(kTwoPi * u2);
  has_spare_ = true;
  return radius * std::cos(kTwoPi * u2);
}

void ChannelWallSampler::advance() {
  const double innovation = std::sqrt(1.0 - correlation_ * correlation_) * sigma_;
  for (double& value : fluctuation_) value = correlation_ * value + innovation * normal_();
}

double ChannelWallSampler::velocity(std::size_t point) const {
  return std::max(mean_[point] + fluctuation_[point], floor_);
}

template <typename T> void ChannelWallSampler::write(T* inputs, T* targets) const {
  for (std::size_t i = 0; i < points(); ++i) {
    const double u = velocity(i);
    const double ut = solve_friction_velocity(u, h_, nu_);
    inputs[i] = static_cast<T>(u);
    targets[i] = static_cast<T>(ut * ut);
  }
}

void ChannelWallSampler::fill(float* inputs, float* targets) const { write(inputs, targets); }

void ChannelWallSampler::fill(double* inputs, double* targets) const { write(inputs, targets); }

} // namespace nekrs_ml
