// The stand-in solver's channel wall (synthetic_channel.hpp).
#include "nekrs_ml/synthetic_channel.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace nekrs_ml {
namespace {

constexpr double kSpanwiseRms = 0.5; // of the streamwise fluctuation
constexpr double kNormalRms = 0.2;
constexpr double kPlaneStretching = 2.0; // tanh stretching of the volume's planes
constexpr double kDampingLength = 26.0;  // van Driest's A+

} // namespace

SyntheticChannelField::SyntheticChannelField(std::size_t points, double re_tau, double nu,
                                             double h, double fluctuation, double correlation,
                                             std::uint64_t seed, int rank)
    : streamwise_(points, re_tau, nu, h, fluctuation, correlation, seed, rank),
      correlation_(correlation), sigma_(fluctuation * streamwise_.mean_velocity()),
      normal_(seed ^ 0x5eedULL, static_cast<std::uint64_t>(rank)),
      volume_normal_(seed ^ 0xf10ULL, static_cast<std::uint64_t>(rank)),
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
  wall_law_stress(inputs.data(), u_.size(), streamwise_.height(), streamwise_.viscosity(), targets);
}

void SyntheticChannelField::apply_wall_stress(const double* tau) {
  applied_.assign(tau, tau + applied_.size());
  ++applications_;
}

void SyntheticChannelField::end_run_at(long step) {
  if (end_step_ < 0 || step < end_step_) end_step_ = step;
}

} // namespace nekrs_ml

namespace nekrs_ml {

WallFields::Geometry SyntheticChannelField::geometry() {
  Geometry geometry;
  const std::size_t n = u_.size();
  geometry.weights.assign(n, 1.0);
  geometry.tangents1.assign(3 * n, 0.0);
  geometry.tangents2.assign(3 * n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    geometry.tangents1[3 * i] = sign(i); // t1 = s x
    geometry.tangents2[3 * i + 2] = 1.0;  // t2 = z
  }
  geometry.on_element_edge.assign(n, 0);
  geometry.known = true;
  return geometry;
}

WallFields::VolumeNodes SyntheticChannelField::volume_nodes() {
  std::vector<double> planes(kPlanes);
  for (std::size_t k = 0; k < kPlanes; ++k) {
    const double s = 2.0 * static_cast<double>(k) / (kPlanes - 1) - 1.0;
    planes[k] = std::tanh(kPlaneStretching * s) / std::tanh(kPlaneStretching);
  }
  VolumeNodes nodes;
  for (std::size_t k = 0; k < kPlanes; ++k) {
    const double below = k > 0 ? planes[k] - planes[k - 1] : 0.0;
    const double above = k + 1 < kPlanes ? planes[k + 1] - planes[k] : 0.0;
    const double weight = 0.5 * (below + above) / kNodesPerPlane;
    for (std::size_t j = 0; j < kNodesPerPlane; ++j) {
      nodes.y.push_back(planes[k]);
      nodes.weights.push_back(weight);
    }
  }
  volume_y_ = nodes.y;
  return nodes;
}

void SyntheticChannelField::volume_velocity(double* velocity) {
  const std::size_t n = volume_y_.size();
  const double u_tau = streamwise_.friction_velocity(), nu = streamwise_.viscosity();
  for (std::size_t i = 0; i < n; ++i) {
    const double y = volume_y_[i];
    const double d = std::max(0.0, 1.0 - std::abs(y));
    const double d_plus = d * u_tau / nu;
    const double f = 1.0 - std::exp(-d_plus / kDampingLength);
    const double rho = 0.5 * y; // <u'v'> = rho (2 f u_tau) (f u_tau) = y f^2 u_tau^2
    const double xi1 = volume_normal_(), xi2 = volume_normal_(), xi3 = volume_normal_();
    velocity[i] = u_tau * reichardt_uplus(d_plus) + 2.0 * f * u_tau * xi1;
    velocity[n + i] = f * u_tau * (rho * xi1 + std::sqrt(1.0 - rho * rho) * xi2);
    velocity[2 * n + i] = f * u_tau * xi3;
  }
}

} // namespace nekrs_ml
