// NekRS's wall as the coupling sees it (nekrs_ml::WallFields): the sample-point velocity and the
// resolved wall shear stress from WallSampler, the wall stress vector into the BC's two usrwrk
// fields (bc.hpp).
#pragma once

#include "nekrs_ml/nekrs/bc.hpp"
#include "nekrs_ml/nekrs/compat.hpp"
#include "nekrs_ml/nekrs/wall_sampler.hpp"

#include "nekrs_ml/coupling.hpp"

#include <algorithm>
#include <memory>
#include <vector>

namespace nekrs_ml::nekrs {

class NekrsWallFields : public WallFields {
public:
  // The BC field exists from setup on (a wall-model BC must never read past usrwrk); the wall
  // points are found at the first step, once NekRS has finalised the geometry.
  NekrsWallFields(nrs_t* nrs, int usrwrk_field, std::vector<long long> wall_ids, double height)
      : nrs_(nrs), wall_ids_(std::move(wall_ids)), height_(height),
        stress_(std::make_unique<WallStressField>(nrs, usrwrk_field)) {
    mu_ = compat::viscosity();
    nu_ = mu_ / compat::density();
  }

  std::size_t wall_points() override {
    if (!sampler_) sampler_ = std::make_unique<WallSampler>(nrs_, wall_ids_, height_);
    return sampler_->size();
  }

  void sample_inputs(double* inputs) override {
    sampler_->velocity(velocity_); // collective
    sampler_->points().to_wall_frame(velocity_.data(), sampler_->size(), 1, inputs);
  }

  void wall_targets(double* targets) override {
    sampler_->strain_rate(strain_); // collective
    sampler_->points().wall_shear_stress(strain_.data(), strain_.size() / 6, mu_, targets);
  }

  void apply_wall_stress(const double* tau) override { stress_->set(sampler_->points(), tau); }

  double kinematic_viscosity() const override { return nu_; }

  bool flow_state(FlowState& state) override {
    double flow = 0.0;
    compat::x_flow_and_volume(nrs_, compat::comm(), flow, state.volume); // collective
    state.bulk_velocity = state.volume > 0 ? flow / state.volume : 0.0;
    state.driving_gradient =
        body_force_ + compat::flow_rate_pressure_gradient(nrs_) / compat::density();
    return true;
  }

  // The case's own uniform body force along x per unit mass (a pressure-gradient drive set in
  // its udf): part of the momentum balance.
  void set_body_force(double fx) { body_force_ = fx; }

  Geometry geometry() override {
    const WallPoints& points = sampler_->points();
    return {points.weights(), points.tangents1(), points.tangents2(), points.on_face_edge(),
            true};
  }

  // Every velocity node of this rank, weighted by the mass matrix (GLL weights times the
  // Jacobian): the planes y = const of a channel mesh are found by the coupling.
  VolumeNodes volume_nodes() override {
    mesh_t* mesh = compat::mesh(nrs_);
    const std::size_t n = static_cast<std::size_t>(mesh->Nlocal);
    auto [x, y, z] = mesh->xyzHost();
    std::vector<dfloat> lmm(n);
    mesh->o_LMM.copyTo(lmm.data(), n);
    return {std::vector<double>(y.begin(), y.begin() + n), std::vector<double>(lmm.begin(), lmm.end())};
  }

  void volume_velocity(double* velocity) override {
    mesh_t* mesh = compat::mesh(nrs_);
    const std::size_t n = static_cast<std::size_t>(mesh->Nlocal);
    const std::size_t offset = static_cast<std::size_t>(compat::field_offset(nrs_));
    host_velocity_.resize(3 * offset);
    compat::velocity(nrs_).copyTo(host_velocity_.data(), 3 * offset);
    for (std::size_t c = 0; c < 3; ++c) {
      std::copy_n(host_velocity_.data() + c * offset, n, velocity + c * n);
    }
  }

  void end_run_at(long step) override { compat::end_run_at(static_cast<int>(step)); }

  // Releases the point interpolation while MPI and the device are still up (collective).
  void release() { sampler_.reset(); }

  const WallSampler* sampler() const { return sampler_.get(); }

private:
  nrs_t* nrs_;
  std::vector<long long> wall_ids_;
  double height_;
  double mu_ = 0.0, nu_ = 0.0, body_force_ = 0.0;
  std::unique_ptr<WallSampler> sampler_;
  std::unique_ptr<WallStressField> stress_;
  std::vector<double> velocity_, strain_;
  std::vector<dfloat> host_velocity_;
};

} // namespace nekrs_ml::nekrs
