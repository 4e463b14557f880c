// nekrs_ml::WallPoints — the wall-point bookkeeping of the wall-model workflow, independent of
// NekRS (the adapter in udf/nekrs/ fills a WallMeshView from mesh_t; tests fill it from numpy).
//
// One wall point per node of every wall face (a face whose boundary ID is one of the wall IDs).
// A node on an edge or corner shared by two wall faces of one element is one volume node but two
// wall points (one per face, each with its own normal); the BC hand-off averages them.
//
// Conventions (docs/nekrs.md):
//  - normals in the mesh are outward (pointing out of the fluid, into the wall); the wall frame
//    of a point is (t1, t2, n) with t1, t2 the face tangents of the mesh and n = -outward normal
//    the inward unit normal (pointing into the fluid);
//  - the sample point of a wall point is x_wall + h n;
//  - the model inputs are [u.t1, u.t2, u.n] of the velocity u at the sample point;
//  - the wall shear stress tau is the stress the fluid exerts on the wall,
//    tau = 2 mu S n (minus its normal part) with S the strain rate at the wall node: for a
//    no-slip wall it points along the near-wall flow; the targets are [tau.t1, tau.t2];
//  - the wall model stores the stress it applies as [tau.t1, tau.t2] per wall node (two usrwrk
//    fields, scatter) and applies the traction -[tau.t1, tau.t2] to the fluid
//    (wall_model_traction): the wall holds the fluid back with the stress the fluid exerts on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nekrs_ml {

// Host arrays of one rank's mesh (not owned). Layouts follow NekRS's mesh_t.
struct WallMeshView {
  std::size_t elements = 0;     // Nelements
  int faces = 6;                // Nfaces
  int face_nodes = 0;           // Nfp = (N + 1)^2
  std::size_t volume_nodes = 0; // Nlocal: valid volume indices are 0 .. volume_nodes - 1
  // EToB: boundary ID of face f of element e at [f + faces * e] (< 1: no boundary).
  const int* boundary_ids = nullptr;
  // vmapM: volume index of face node m of face f of element e at [(e * faces + f) * face_nodes + m].
  const std::int64_t* face_to_volume = nullptr;
  // Per face node, same index as face_to_volume, 3 values each (x, y, z): the outward unit
  // normal and the two unit tangents of the face.
  const double* normals = nullptr;
  const double* tangents1 = nullptr;
  const double* tangents2 = nullptr;
  // Volume node coordinates [volume_nodes].
  const double* x = nullptr;
  const double* y = nullptr;
  const double* z = nullptr;
  // Optional, per face node (same index as face_to_volume): the surface quadrature weight, the
  // GLL weights times the surface Jacobian (NekRS's sgeo WSJID). Without it every weight is 1.
  const double* surface_weights = nullptr;
};

// The traction (tr1, tr2) along (t1, t2) that the wall model applies to the fluid at a wall node
// whose stored wall shear stress is (tau1, tau2) = [tau.t1, tau.t2] in the same frame:
// -(tau1, tau2), whatever the velocity at the wall node (the BC function of wall_model.okl).
void wall_model_traction(double tau1, double tau2, double& tr1, double& tr2);

class WallPoints {
public:
  // Throws ConfigError for inconsistent sizes, a volume index out of range, a degenerate
  // normal, an empty wall-ID list or h <= 0. A rank without wall faces gives size() == 0.
  WallPoints(const WallMeshView& mesh, const std::vector<long long>& wall_ids, double height);

  std::size_t size() const { return volume_.size(); }
  double height() const { return height_; }
  const std::vector<long long>& wall_ids() const { return wall_ids_; }

  // Per wall point, row-major [size()][3]: sample point, wall node coordinates, and the frame.
  const std::vector<double>& sample_points() const { return samples_; }
  const std::vector<double>& wall_coordinates() const { return wall_xyz_; }
  const std::vector<double>& tangents1() const { return t1_; }
  const std::vector<double>& tangents2() const { return t2_; }
  const std::vector<double>& normals() const { return n_; } // inward
  // Volume index (vmapM entry) of each wall point: what the BC kernel sees as idM / idxVol.
  const std::vector<std::int64_t>& volume_indices() const { return volume_; }
  // Distinct volume nodes of the wall points (in first-seen order) and how many wall points
  // share each of them.
  const std::vector<std::int64_t>& wall_nodes() const { return nodes_; }
  const std::vector<int>& multiplicity() const { return multiplicity_; }
  // Surface quadrature weight of each wall point: the sum over a wall is its area, and a wall
  // average is the weighted mean (a plain mean over-counts the nodes of small or edge regions).
  const std::vector<double>& weights() const { return weights_; }
  // Whether each wall point lies on an edge of its face (face-local index 0 or N in either
  // direction of the (N+1)^2 face grid): there the strain rate is the average of the adjacent
  // elements' one-sided values, not the element's own (docs/nekrs.md, "Training nodes").
  const std::vector<unsigned char>& on_face_edge() const { return on_edge_; }

  // Sample coordinates split by component (what NekRS's point interpolation takes).
  void sample_coordinates(std::vector<double>& x, std::vector<double>& y,
                          std::vector<double>& z) const;

  // Model inputs [size()][3] = [u.t1, u.t2, u.n] from the velocity at the sample points.
  // Component c of point i is read at velocity[c * component_stride + i * point_stride]:
  // component_stride = n, point_stride = 1 for NekRS's field-major output;
  // component_stride = 1, point_stride = 3 for a row-major [n][3] array.
  void to_wall_frame(const double* velocity, std::size_t component_stride,
                     std::size_t point_stride, float* inputs) const;
  void to_wall_frame(const double* velocity, std::size_t component_stride,
                     std::size_t point_stride, double* inputs) const;

  // Targets [size()][2] = [tau.t1, tau.t2] from the strain rate of a volume field laid out as
  // NekRS's strainRate() gives it: six fields of `field_offset` values in the order
  // S11, S12, S13, S22, S23, S33, with S = (grad u + grad u^T) / 2, read at each wall node.
  // `viscosity` is the dynamic viscosity mu.
  void wall_shear_stress(const double* strain_rate, std::size_t field_offset, double viscosity,
                         float* targets) const;
  void wall_shear_stress(const double* strain_rate, std::size_t field_offset, double viscosity,
                         double* targets) const;

  // The BC hand-off of one component: writes component `component` (0: tau.t1, 1: tau.t2) of
  // the predictions [size()][2] to usrwrk[field * field_offset + volume index] of each wall
  // node, averaged over the wall points that share the volume node (each in its own face's
  // frame: exact where those faces share the tangents, an approximation at a wall edge whose
  // faces do not). Other entries of usrwrk are left as they are. component must be 0 or 1,
  // usrwrk must hold at least (field + 1) * field_offset values and field_offset must exceed
  // every volume index (ConfigError otherwise).
  void scatter(const float* predictions, int component, double* usrwrk, std::size_t usrwrk_size,
               std::size_t field_offset, int field) const;
  void scatter(const double* predictions, int component, double* usrwrk,
               std::size_t usrwrk_size, std::size_t field_offset, int field) const;

private:
  template <typename T> void frame_impl(const double*, std::size_t, std::size_t, T*) const;
  template <typename T> void shear_impl(const double*, std::size_t, double, T*) const;
  template <typename T>
  void scatter_impl(const T*, int, double*, std::size_t, std::size_t, int) const;

  double height_;
  std::vector<long long> wall_ids_;
  std::vector<std::int64_t> volume_;
  std::vector<double> samples_, wall_xyz_, t1_, t2_, n_, weights_;
  std::vector<unsigned char> on_edge_;
  std::vector<std::int64_t> nodes_;
  std::vector<std::size_t> node_of_point_; // index into nodes_ of each wall point
  std::vector<int> multiplicity_;
};

} // namespace nekrs_ml
