// nekrs_ml::SyntheticChannelField — the stand-in solver's wall: a turbulent channel's wall points
// with the features of the NekRS adapter's, driven through the same Coupling.
//
// Half of a rank's points lie on the lower wall (y = -1), half on the upper (y = +1), with the
// wall frames NekRS gives them: the face tangents are mirrored between the walls,
//   lower wall: t1 = +x, t2 = +z, inward normal n = +y;
//   upper wall: t1 = -x, t2 = +z, inward normal n = -y,
// so the model sees inputs [u.t1, u.t2, u.n] of either sign. The velocity at the sample point is
// (u, v, w): u the streamwise velocity of ChannelWallSampler (mean profile from Reichardt's law
// at re_tau, fixed spatial modulation, AR(1) fluctuation), w a spanwise and v a wall-normal
// AR(1) fluctuation (rms 0.5 and 0.2 times the streamwise one). The resolved wall shear stress is
// Reichardt's at the tangential speed, along the tangential velocity:
//   tau = tau_R(|u_t|) u_t / |u_t|,  targets [tau.t1, tau.t2].
// The same arguments give bit-identical data (see ChannelWallSampler).
//
// The wall geometry: unit weight per point, the tangents above, no element edges.
//
// The volume (for the flow statistics): kPlanes planes y = const between the walls (tanh-
// stretched), kNodesPerPlane nodes per plane and rank, each weighted by its plane's share of
// the channel height. Whenever the coupling asks, the velocity there is drawn afresh (its own
// random stream: the wall data do not change) with a known mean profile and Reynolds stresses:
//   U = u_tau u+(d u_tau / nu) (Reichardt, d the distance to the nearer wall), V = W = 0,
//   <u'u'> = 4 f^2 u_tau^2, <v'v'> = <w'w'> = f^2 u_tau^2, <u'v'> = y f^2 u_tau^2,
//   f = 1 - exp(-d u_tau / (26 nu)),
// so that the shear stress -<u'v'> points away from each wall, as in a channel.
#pragma once

#include "nekrs_ml/coupling.hpp"
#include "nekrs_ml/wall.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nekrs_ml {

class SyntheticChannelField : public WallFields {
public:
  SyntheticChannelField(std::size_t points, double re_tau, double nu, double h, double fluctuation,
                        double correlation, std::uint64_t seed, int rank);

  // One solver step: advances every fluctuation.
  void advance();

  std::size_t wall_points() override { return streamwise_.points(); }
  void sample_inputs(double* inputs) override;
  void wall_targets(double* targets) override;
  void apply_wall_stress(const double* tau) override;
  double kinematic_viscosity() const override { return streamwise_.viscosity(); }
  void end_run_at(long step) override;
  Geometry geometry() override;
  VolumeNodes volume_nodes() override;
  void volume_velocity(double* velocity) override;

  static constexpr std::size_t kPlanes = 33;
  static constexpr std::size_t kNodesPerPlane = 8;

  // The step the coupling asked the run to end with (-1: none).
  long end_step() const { return end_step_; }
  // The wall stress last applied [n][2] (zeros before the first), and how often it was set.
  const std::vector<double>& applied_stress() const { return applied_; }
  long long applications() const { return applications_; }
  double friction_velocity() const { return streamwise_.friction_velocity(); }
  double mean_velocity() const { return streamwise_.mean_velocity(); }

private:
  double sign(std::size_t point) const { return point % 2 == 0 ? 1.0 : -1.0; } // lower, upper

  ChannelWallSampler streamwise_;
  double correlation_, sigma_;
  NormalDeviates normal_;
  NormalDeviates volume_normal_; // the volume's own stream
  std::vector<double> spanwise_, wall_normal_;
  std::vector<double> u_, unused_; // streamwise velocity (and its 1-D wall stress, unused)
  std::vector<double> applied_;
  std::vector<double> volume_y_; // the volume nodes' y
  long long applications_ = 0;
  long end_step_ = -1;
};

} // namespace nekrs_ml
