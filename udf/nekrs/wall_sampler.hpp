// Wall points of a NekRS mesh and the fields sampled at them: builds nekrs_ml::WallPoints from
// mesh_t (EToB, vmapM, o_sgeo, coordinates), locates the off-wall sample points with NekRS's
// point interpolation, and evaluates the velocity there and the strain rate at the wall nodes.
// All calls are collective over the solver's communicator.
#pragma once

#include "nekrs_ml/nekrs/compat.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/wall_points.hpp"

#include "pointInterpolation.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nekrs_ml::nekrs {

class WallSampler {
public:
  // Call once the mesh is final: NekRS recomputes the geometry (o_sgeo) after UDF_Setup, so the
  // plugin builds the sampler at the first UDF_ExecuteStep.
  WallSampler(nrs_t* nrs, const std::vector<long long>& wall_ids, double height) : nrs_(nrs) {
    mesh_t* mesh = compat::mesh(nrs);
    const std::size_t faces = static_cast<std::size_t>(mesh->Nelements) * mesh->Nfaces;
    const std::size_t nodes = faces * mesh->Nfp;

    std::vector<dfloat> sgeo(nodes * mesh->Nsgeo);
    mesh->o_sgeo.copyTo(sgeo.data(), sgeo.size());
    std::vector<double> normals(3 * nodes), t1(3 * nodes), t2(3 * nodes), weights(nodes);
    for (std::size_t k = 0; k < nodes; ++k) {
      const dfloat* g = &sgeo[k * mesh->Nsgeo];
      weights[k] = g[WSJID]; // GLL weights times the surface Jacobian
      const int ids[3][3] = {{NXID, NYID, NZID}, {T1XID, T1YID, T1ZID}, {T2XID, T2YID, T2ZID}};
      for (int c = 0; c < 3; ++c) {
        normals[3 * k + c] = g[ids[0][c]];
        t1[3 * k + c] = g[ids[1][c]];
        t2[3 * k + c] = g[ids[2][c]];
      }
    }
    std::vector<std::int64_t> vmap(mesh->vmapM, mesh->vmapM + nodes);
    auto [x, y, z] = mesh->xyzHost();
    const std::vector<double> xd(x.begin(), x.end()), yd(y.begin(), y.end()),
        zd(z.begin(), z.end());

    WallMeshView view;
    view.elements = static_cast<std::size_t>(mesh->Nelements);
    view.faces = mesh->Nfaces;
    view.face_nodes = mesh->Nfp;
    view.volume_nodes = static_cast<std::size_t>(mesh->Nlocal);
    view.boundary_ids = mesh->EToB;
    view.face_to_volume = vmap.data();
    view.normals = normals.data();
    view.tangents1 = t1.data();
    view.tangents2 = t2.data();
    view.x = xd.data();
    view.y = yd.data();
    view.z = zd.data();
    view.surface_weights = weights.data();
    points_ = std::make_unique<WallPoints>(view, wall_ids, height);

    // Locate the sample points (find is collective, also on ranks without wall points).
    const std::size_t n = points_->size();
    std::vector<double> px, py, pz;
    points_->sample_coordinates(px, py, pz);
    interpolation_ = std::make_unique<pointInterpolation_t>(mesh, compat::comm());
    if (n > 0) {
      interpolation_->setPoints(std::vector<dfloat>(px.begin(), px.end()),
                                std::vector<dfloat>(py.begin(), py.end()),
                                std::vector<dfloat>(pz.begin(), pz.end()));
    } else {
      occa::memory none;
      interpolation_->setPoints(none, none, none);
    }
    interpolation_->find(pointInterpolation_t::VerbosityLevel::None);

    long long lost = 0;
    const auto& code = interpolation_->data().code;
    for (std::size_t i = 0; i < n; ++i) {
      if (code[i] == pointInterpolation_t::CODE_NOT_FOUND) ++lost;
    }
    MPI_Allreduce(MPI_IN_PLACE, &lost, 1, MPI_LONG_LONG, MPI_SUM, compat::comm());
    if (lost > 0) {
      throw ConfigError(std::to_string(lost) + " off-wall sample points (sampleHeight = " +
                        std::to_string(height) + ") lie outside the mesh");
    }
    o_samples_ = platform->device.malloc<dfloat>(3 * std::max<std::size_t>(n, 1));
    host_.resize(3 * std::max<std::size_t>(n, 1));
  }

  const WallPoints& points() const { return *points_; }
  std::size_t size() const { return points_->size(); }

  // Velocity at the sample points, component-major: velocity[c * size() + i].
  void velocity(std::vector<double>& velocity) {
    const dlong n = static_cast<dlong>(size());
    interpolation_->eval(3, compat::field_offset(nrs_), compat::velocity(nrs_), n, o_samples_);
    o_samples_.copyTo(host_.data(), host_.size());
    velocity.assign(host_.begin(), host_.begin() + 3 * size());
  }

  // Strain rate of the velocity on this rank's volume nodes: 6 fields of field_offset values
  // (S11, S12, S13, S22, S23, S33), averaged across element faces by NekRS.
  void strain_rate(std::vector<double>& strain) {
    const std::size_t count = 6 * static_cast<std::size_t>(compat::field_offset(nrs_));
    occa::memory o_strain = nrs_->strainRate();
    strain_host_.resize(count);
    o_strain.copyTo(strain_host_.data(), count);
    strain.assign(strain_host_.begin(), strain_host_.end());
  }

private:
  nrs_t* nrs_;
  std::unique_ptr<WallPoints> points_;
  std::unique_ptr<pointInterpolation_t> interpolation_;
  occa::memory o_samples_;
  std::vector<dfloat> host_, strain_host_;
};

} // namespace nekrs_ml::nekrs
