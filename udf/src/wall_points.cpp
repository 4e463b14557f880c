#include "nekrs_ml/wall_points.hpp"

#include "nekrs_ml/errors.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_map>

namespace nekrs_ml {

namespace {

double dot(const double* a, const double* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

std::string where(std::size_t e, int f) {
  return "element " + std::to_string(e) + " face " + std::to_string(f);
}

} // namespace

void wall_model_traction(double tau1, double tau2, double& tr1, double& tr2) {
  tr1 = -tau1;
  tr2 = -tau2;
}

WallPoints::WallPoints(const WallMeshView& mesh, const std::vector<long long>& wall_ids,
                       double height)
    : height_(height), wall_ids_(wall_ids) {
  if (!(height > 0.0)) {
    throw ConfigError("WallPoints: the sample height h must be > 0, got " +
                      std::to_string(height));
  }
  if (wall_ids.empty()) throw ConfigError("WallPoints: no wall boundary IDs given");
  if (mesh.faces < 1 || mesh.face_nodes < 1) {
    throw ConfigError("WallPoints: faces and face_nodes must be >= 1");
  }
  if (mesh.elements > 0 && (!mesh.boundary_ids || !mesh.face_to_volume || !mesh.normals ||
                            !mesh.tangents1 || !mesh.tangents2 || !mesh.x || !mesh.y ||
                            !mesh.z)) {
    throw ConfigError("WallPoints: a mesh array is missing");
  }

  // The face grid is (N+1) x (N+1) for a hexahedral mesh; otherwise no node counts as an edge.
  int nq = static_cast<int>(std::lround(std::sqrt(static_cast<double>(mesh.face_nodes))));
  if (nq * nq != mesh.face_nodes) nq = 0;
  std::unordered_map<std::int64_t, std::size_t> node_index;
  for (std::size_t e = 0; e < mesh.elements; ++e) {
    for (int f = 0; f < mesh.faces; ++f) {
      const int id = mesh.boundary_ids[f + static_cast<std::size_t>(mesh.faces) * e];
      if (std::find(wall_ids.begin(), wall_ids.end(), static_cast<long long>(id)) ==
          wall_ids.end()) {
        continue;
      }
      for (int m = 0; m < mesh.face_nodes; ++m) {
        const std::size_t k = (e * mesh.faces + f) * mesh.face_nodes + m;
        const std::int64_t v = mesh.face_to_volume[k];
        if (v < 0 || static_cast<std::size_t>(v) >= mesh.volume_nodes) {
          throw ConfigError("WallPoints: " + where(e, f) + " node " + std::to_string(m) +
                            ": volume index " + std::to_string(v) + " is outside 0.." +
                            std::to_string(mesh.volume_nodes));
        }
        const double* normal = mesh.normals + 3 * k;
        const double length = std::sqrt(dot(normal, normal));
        if (!(length > 1e-12)) {
          throw ConfigError("WallPoints: " + where(e, f) + " node " + std::to_string(m) +
                            " has no normal (zero length)");
        }
        const double n[3] = {-normal[0] / length, -normal[1] / length, -normal[2] / length};
        const double wall[3] = {mesh.x[v], mesh.y[v], mesh.z[v]};
        volume_.push_back(v);
        const double weight = mesh.surface_weights ? mesh.surface_weights[k] : 1.0;
        if (!(weight >= 0.0) || !std::isfinite(weight)) {
          throw ConfigError("WallPoints: " + where(e, f) + " node " + std::to_string(m) +
                            " has the surface weight " + std::to_string(weight));
        }
        weights_.push_back(weight);
        const int i = nq ? m % nq : 1, j = nq ? m / nq : 1;
        on_edge_.push_back(nq && (i == 0 || j == 0 || i == nq - 1 || j == nq - 1) ? 1 : 0);
        for (int c = 0; c < 3; ++c) {
          n_.push_back(n[c]);
          t1_.push_back(mesh.tangents1[3 * k + c]);
          t2_.push_back(mesh.tangents2[3 * k + c]);
          wall_xyz_.push_back(wall[c]);
          samples_.push_back(wall[c] + height * n[c]);
        }
        auto [it, inserted] = node_index.emplace(v, nodes_.size());
        if (inserted) {
          nodes_.push_back(v);
          multiplicity_.push_back(0);
        }
        ++multiplicity_[it->second];
        node_of_point_.push_back(it->second);
      }
    }
  }
}

void WallPoints::sample_coordinates(std::vector<double>& x, std::vector<double>& y,
                                    std::vector<double>& z) const {
  const std::size_t n = size();
  x.resize(n);
  y.resize(n);
  z.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = samples_[3 * i];
    y[i] = samples_[3 * i + 1];
    z[i] = samples_[3 * i + 2];
  }
}

template <typename T>
void WallPoints::frame_impl(const double* velocity, std::size_t component_stride,
                            std::size_t point_stride, T* inputs) const {
  for (std::size_t i = 0; i < size(); ++i) {
    const double u[3] = {velocity[i * point_stride], velocity[component_stride + i * point_stride],
                         velocity[2 * component_stride + i * point_stride]};
    inputs[3 * i + 0] = static_cast<T>(dot(u, &t1_[3 * i]));
    inputs[3 * i + 1] = static_cast<T>(dot(u, &t2_[3 * i]));
    inputs[3 * i + 2] = static_cast<T>(dot(u, &n_[3 * i]));
  }
}

void WallPoints::to_wall_frame(const double* velocity, std::size_t component_stride,
                               std::size_t point_stride, float* inputs) const {
  frame_impl(velocity, component_stride, point_stride, inputs);
}
void WallPoints::to_wall_frame(const double* velocity, std::size_t component_stride,
                               std::size_t point_stride, double* inputs) const {
  frame_impl(velocity, component_stride, point_stride, inputs);
}

template <typename T>
void WallPoints::shear_impl(const double* s, std::size_t offset, double viscosity,
                            T* targets) const {
  for (std::size_t i = 0; i < size(); ++i) {
    const std::size_t v = static_cast<std::size_t>(volume_[i]);
    if (v >= offset) {
      throw ConfigError("WallPoints::wall_shear_stress: volume index " + std::to_string(v) +
                        " is not below the field offset " + std::to_string(offset));
    }
    const double s11 = s[v], s12 = s[offset + v], s13 = s[2 * offset + v];
    const double s22 = s[3 * offset + v], s23 = s[4 * offset + v], s33 = s[5 * offset + v];
    const double* n = &n_[3 * i];
    // Traction on the wall: 2 mu S n with n pointing into the fluid.
    const double tau[3] = {2.0 * viscosity * (s11 * n[0] + s12 * n[1] + s13 * n[2]),
                           2.0 * viscosity * (s12 * n[0] + s22 * n[1] + s23 * n[2]),
                           2.0 * viscosity * (s13 * n[0] + s23 * n[1] + s33 * n[2])};
    // Tangential part only (the frame tangents need not be exactly orthogonal to n).
    const double normal = dot(tau, n);
    const double shear[3] = {tau[0] - normal * n[0], tau[1] - normal * n[1],
                             tau[2] - normal * n[2]};
    targets[2 * i + 0] = static_cast<T>(dot(shear, &t1_[3 * i]));
    targets[2 * i + 1] = static_cast<T>(dot(shear, &t2_[3 * i]));
  }
}

void WallPoints::wall_shear_stress(const double* strain_rate, std::size_t field_offset,
                                   double viscosity, float* targets) const {
  shear_impl(strain_rate, field_offset, viscosity, targets);
}
void WallPoints::wall_shear_stress(const double* strain_rate, std::size_t field_offset,
                                   double viscosity, double* targets) const {
  shear_impl(strain_rate, field_offset, viscosity, targets);
}

template <typename T>
void WallPoints::scatter_impl(const T* predictions, int component, double* usrwrk,
                              std::size_t usrwrk_size, std::size_t field_offset, int field) const {
  if (component != 0 && component != 1) {
    throw ConfigError("WallPoints::scatter: component must be 0 (tau.t1) or 1 (tau.t2), got " +
                      std::to_string(component));
  }
  if (field < 0) throw ConfigError("WallPoints::scatter: field must be >= 0");
  const std::size_t base = static_cast<std::size_t>(field) * field_offset;
  if (usrwrk_size < base + field_offset) {
    throw ConfigError("WallPoints::scatter: usrwrk holds " + std::to_string(usrwrk_size) +
                      " values, field " + std::to_string(field) + " with offset " +
                      std::to_string(field_offset) + " needs " +
                      std::to_string(base + field_offset));
  }
  std::vector<double> sum(nodes_.size(), 0.0);
  for (std::size_t i = 0; i < size(); ++i) {
    sum[node_of_point_[i]] += static_cast<double>(predictions[2 * i + component]);
  }
  for (std::size_t j = 0; j < nodes_.size(); ++j) {
    const auto v = static_cast<std::size_t>(nodes_[j]);
    if (v >= field_offset) {
      throw ConfigError("WallPoints::scatter: volume index " + std::to_string(v) +
                        " is not below the field offset " + std::to_string(field_offset));
    }
    usrwrk[base + v] = sum[j] / multiplicity_[j];
  }
}

void WallPoints::scatter(const float* predictions, int component, double* usrwrk,
                         std::size_t usrwrk_size, std::size_t field_offset, int field) const {
  scatter_impl(predictions, component, usrwrk, usrwrk_size, field_offset, field);
}
void WallPoints::scatter(const double* predictions, int component, double* usrwrk,
                         std::size_t usrwrk_size, std::size_t field_offset, int field) const {
  scatter_impl(predictions, component, usrwrk, usrwrk_size, field_offset, field);
}

} // namespace nekrs_ml
