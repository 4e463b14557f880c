// The stand-in solver's channel wall (synthetic_channel.hpp).
#include "nekrs_ml/synthetic_channel.hpp"

#include <cmath>

namespace nekrs_ml {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kSpanwiseRms = 0.5; // of the streamwise fluctuation
constexpr double kNormalRms = 0.2;

std::uint64_t mix(std::uint64_t x) { // SplitMix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

} // namespace

SyntheticChannelField::SyntheticChannelField(std::size_t points, double re_tau, double nu,
                                             double h, double fluctuation, double correlation,
                                             std::uint64_t seed, int rank)
    : streamwise_(points, re_tau, nu, h, fluctuation, correlation, seed, rank),
      correlation_(correlation), sigma_(fluctuation * streamwise_.mean_velocity()),
      engine_(mix(mix(seed ^ 0x5eedULL) ^ static_cast<std::uint64_t>(rank))),
      spanwise_(points), normal_(points), u_(points), unused_(points), applied_(2 * points, 0.0) {
  for (std::size_t i = 0; i < points; ++i) {
    spanwise_[i] = kSpanwiseRms * sigma_ * normal();
    normal_[i] = kNormalRms * sigma_ * normal();
  }
}

double SyntheticChannelField::normal() {
  if (has_spare_normal_) {
    has_spare_normal_ = false;
    return spare_normal_;
  }
  const double u1 = static_cast<double>((engine_() >> 11) + 1) * 0x1.0p-53;
  const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
  const double radius = std::sqrt(-2.0 * std::log(u1));
  spare_normal_ = radius * std::sin(kTwoPi * u2);
  has_spare_normal_ = true;
  return radius * std::cos(kTwoPi * u2);
}

void SyntheticChannelField::advance() {
  streamwise_.advance();
  const double innovation = std::sqrt(1.0 - correlation_ * correlation_) * sigma_;
  for (std::size_t i = 0; i < spanwise_.size(); ++i) {
    spanwise_[i] = correlation_ * spanwise_[i] + kSpanwiseRms * innovation * normal();
    normal_[i] = correlation_ * normal_[i] + kNormalRms * innovation * normal();
  }
}

void SyntheticChannelField::sample_inputs(double* inputs) {
  streamwise_.fill(u_.data(), unused_.data());
  for (std::size_t i = 0; i < u_.size(); ++i) {
    const double s = sign(i); // t1 = s x, t2 = z, n = s y
    inputs[3 * i] = s * u_[i];
    inputs[3 * i + 1] = spanwise_[i];
    inputs[3 * i + 2] = s * normal_[i];
  }
}

void SyntheticChannelField::wall_targets(double* targets) {
  std::vector<double> inputs(3 * u_.size());
  sample_inputs(inputs.data());
  const double h = streamwise_.height(), nu = streamwise_.viscosity();
  for (std::size_t i = 0; i < u_.size(); ++i) {
    const double u1 = inputs[3 * i], u2 = inputs[3 * i + 1];
    const double speed = std::hypot(u1, u2);
    const double tau = reichardt_wall_shear_stress(speed, h, nu);
    targets[2 * i] = speed > 0 ? tau * u1 / speed : 0.0;
    targets[2 * i + 1] = speed > 0 ? tau * u2 / speed : 0.0;
  }
}

void SyntheticChannelField::apply_wall_stress(const double* tau) {
  applied_.assign(tau, tau + applied_.size());
  ++applications_;
}

void SyntheticChannelField::end_run_at(long step) {
  if (end_step_ < 0 || step < end_step_) end_step_ = step;
}

} // namespace nekrs_ml
