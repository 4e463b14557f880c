// The stand-in solver's channel wall (synthetic_channel.hpp).
#include "nekrs_ml/synthetic_channel.hpp"

#include <cmath>
#include <cstdint>

namespace nekrs_ml {
namespace {

constexpr double kSpanwiseRms = 0.5; // of the streamwise fluctuation
constexpr double kNormalRms = 0.2;

} // namespace

SyntheticChannelField::SyntheticChannelField(std::size_t points, double re_tau, double nu,
                                             double h, double fluctuation, double correlation,
                                             std::uint64_t seed, int rank)
    : streamwise_(points, re_tau, nu, h, fluctuation, correlation, seed, rank),
      correlation_(correlation), sigma_(fluctuation * streamwise_.mean_velocity()),
      normal_(seed ^ 0x5eedULL, static_cast<std::uint64_t>(rank)),
      spanwise_(points), wall_normal_(points), u_(points), unused_(points), applied_(2 * points, 0.0) {
  for (std::size_t i = 0; i < points; ++i) {
    spanwise_[i] = kSpanwiseRms * sigma_ * normal_();
    wall_normal_[i] = kNormalRms * sigma_ * normal_();
  }
}

void SyntheticChannelField::advance() {
  streamwise_.advance();
  const double innovation = std::sqrt(1.0 - correlation_ * correlation_) * sigma_;
  for (std::size_t i = 0; i < spanwise_.size(); ++i) {
    spanwise_[i] = correlation_ * spanwise_[i] + kSpanwiseRms * innovation * normal_();
    wall_normal_[i] = correlation_ * wall_normal_[i] + kNormalRms * innovation * normal_();
  }
}

void SyntheticChannelField::sample_inputs(double* inputs) {
  streamwise_.fill(u_.data(), unused_.data());
  for (std::size_t i = 0; i < u_.size(); ++i) {
    const double s = sign(i); // t1 = s x, t2 = z, n = s y
    inputs[3 * i] = s * u_[i];
    inputs[3 * i + 1] = spanwise_[i];
    inputs[3 * i + 2] = s * wall_normal_[i];
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
