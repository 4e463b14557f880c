// nekrs_ml._core: the wall-point bookkeeping of the NekRS adapter (nekrs_ml::WallPoints), so that
// the sample points, the wall-frame projection, the wall shear stress and the BC hand-off can be
// tested on a mesh built in numpy. Float arrays are float64 (outputs may be float32) and are used
// in place; results go into new arrays or into caller arrays given as `out`.
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/wall_points.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace nekrs_ml;

namespace {

template <typename T> using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

std::string shape_text(const py::array& array) {
  std::string text;
  for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) {
    text += (axis ? ", " : "") + std::to_string(array.shape(axis));
  }
  return "[" + text + "]";
}

void check_size(const py::array& array, std::size_t expected, const char* what) {
  if (static_cast<std::size_t>(array.size()) != expected) {
    throw ConfigError(std::string("WallPoints: ") + what + " has shape " + shape_text(array) +
                      ", expected " + std::to_string(expected) + " values");
  }
}

// WallPoints copies what it keeps: the numpy mesh arrays are only needed during construction.
std::unique_ptr<WallPoints> make_wall_points(const CArray<int>& boundary_ids,
                                             const CArray<std::int64_t>& face_to_volume,
                                             const CArray<double>& normals,
                                             const CArray<double>& tangents1,
                                             const CArray<double>& tangents2,
                                             const CArray<double>& x, const CArray<double>& y,
                                             const CArray<double>& z, int face_nodes,
                                             const std::vector<long long>& wall_ids,
                                             double height, int faces,
                                             const std::optional<CArray<double>>& surface_weights) {
  if (faces < 1 || face_nodes < 1) throw ConfigError("WallPoints: faces and face_nodes must be >= 1");
  const auto face_count = static_cast<std::size_t>(boundary_ids.size());
  if (face_count % faces != 0) {
    throw ConfigError("WallPoints: boundary_ids has " + std::to_string(face_count) +
                      " values, not a multiple of faces = " + std::to_string(faces));
  }
  WallMeshView mesh;
  mesh.elements = face_count / faces;
  mesh.faces = faces;
  mesh.face_nodes = face_nodes;
  mesh.volume_nodes = static_cast<std::size_t>(x.size());
  const std::size_t nodes = face_count * face_nodes;
  check_size(face_to_volume, nodes, "face_to_volume");
  check_size(normals, 3 * nodes, "normals");
  check_size(tangents1, 3 * nodes, "tangents1");
  check_size(tangents2, 3 * nodes, "tangents2");
  check_size(y, mesh.volume_nodes, "y");
  check_size(z, mesh.volume_nodes, "z");
  mesh.boundary_ids = boundary_ids.data();
  mesh.face_to_volume = face_to_volume.data();
  mesh.normals = normals.data();
  mesh.tangents1 = tangents1.data();
  mesh.tangents2 = tangents2.data();
  mesh.x = x.data();
  mesh.y = y.data();
  mesh.z = z.data();
  if (surface_weights) {
    check_size(*surface_weights, nodes, "surface_weights");
    mesh.surface_weights = surface_weights->data();
  }
  return std::make_unique<WallPoints>(mesh, wall_ids, height);
}

py::array_t<double> rows3(const std::vector<double>& values) {
  const auto n = static_cast<py::ssize_t>(values.size() / 3);
  py::array_t<double> array({n, py::ssize_t{3}});
  std::copy(values.begin(), values.end(), array.mutable_data());
  return array;
}

// A writeable C-contiguous float32/float64 array of `shape` given as `out`, or a new float32 one.
py::array output(const std::optional<py::array>& out, std::vector<py::ssize_t> shape,
                 const char* what) {
  if (!out) return py::array_t<float>(shape);
  const py::array& array = *out;
  const bool f32 = array.dtype().is(py::dtype::of<float>());
  const bool f64 = array.dtype().is(py::dtype::of<double>());
  std::vector<py::ssize_t> actual(array.shape(), array.shape() + array.ndim());
  if ((!f32 && !f64) || !(array.flags() & py::array::c_style) || !array.writeable() ||
      actual != shape) {
    throw ConfigError(std::string("WallPoints.") + what + ": out must be a writeable "
                      "C-contiguous float32 or float64 array of shape [" +
                      std::to_string(shape[0]) + ", " + std::to_string(shape[1]) + "], got " +
                      std::string(py::str(array.dtype())) + shape_text(array));
  }
  return array;
}

py::array to_wall_frame(const WallPoints& self, const CArray<double>& velocity,
                        const std::optional<py::array>& out) {
  const auto n = static_cast<py::ssize_t>(self.size());
  if (velocity.ndim() != 2 || velocity.shape(0) != n || velocity.shape(1) != 3) {
    throw ConfigError("WallPoints.to_wall_frame: velocity must have shape [" +
                      std::to_string(n) + ", 3], got " + shape_text(velocity));
  }
  py::array result = output(out, {n, 3}, "to_wall_frame");
  const double* u = velocity.data();
  void* data = result.mutable_data();
  const bool f32 = result.dtype().is(py::dtype::of<float>());
  py::gil_scoped_release release;
  if (f32) {
    self.to_wall_frame(u, 1, 3, static_cast<float*>(data));
  } else {
    self.to_wall_frame(u, 1, 3, static_cast<double*>(data));
  }
  return result;
}

py::array wall_shear_stress(const WallPoints& self, const CArray<double>& strain_rate,
                            double viscosity, const std::optional<py::array>& out) {
  if (strain_rate.ndim() != 2 || strain_rate.shape(0) != 6) {
    throw ConfigError("WallPoints.wall_shear_stress: strain_rate must have shape "
                      "[6, field_offset] (S11, S12, S13, S22, S23, S33), got " +
                      shape_text(strain_rate));
  }
  const auto n = static_cast<py::ssize_t>(self.size());
  py::array result = output(out, {n, 2}, "wall_shear_stress");
  const double* s = strain_rate.data();
  const auto offset = static_cast<std::size_t>(strain_rate.shape(1));
  void* data = result.mutable_data();
  const bool f32 = result.dtype().is(py::dtype::of<float>());
  py::gil_scoped_release release;
  if (f32) {
    self.wall_shear_stress(s, offset, viscosity, static_cast<float*>(data));
  } else {
    self.wall_shear_stress(s, offset, viscosity, static_cast<double*>(data));
  }
  return result;
}

void scatter(const WallPoints& self, const py::array& predictions, py::array_t<double> usrwrk,
             std::size_t field_offset, int component, int field) {
  const auto n = static_cast<py::ssize_t>(self.size());
  if (predictions.ndim() != 2 || predictions.shape(0) != n || predictions.shape(1) != 2) {
    throw ConfigError("WallPoints.scatter: predictions must have shape [" + std::to_string(n) +
                      ", 2], got " + shape_text(predictions));
  }
  if (!usrwrk.writeable() || !(usrwrk.flags() & py::array::c_style) ||
      !usrwrk.dtype().is(py::dtype::of<double>())) {
    throw ConfigError("WallPoints.scatter: usrwrk must be a writeable C-contiguous float64 array");
  }
  double* out = usrwrk.mutable_data();
  const auto size = static_cast<std::size_t>(usrwrk.size());
  if (predictions.dtype().is(py::dtype::of<float>())) {
    const auto p = CArray<float>::ensure(predictions);
    py::gil_scoped_release release;
    self.scatter(p.data(), component, out, size, field_offset, field);
  } else {
    const auto p = CArray<double>::ensure(predictions);
    if (!p) throw ConfigError("WallPoints.scatter: predictions must be float32 or float64");
    py::gil_scoped_release release;
    self.scatter(p.data(), component, out, size, field_offset, field);
  }
}

py::tuple traction(double tau1, double tau2) {
  double tr1 = 0.0, tr2 = 0.0;
  wall_model_traction(tau1, tau2, tr1, tr2);
  return py::make_tuple(tr1, tr2);
}

} // namespace

void bind_wall_points(py::module_& m) {
  py::class_<WallPoints>(m, "WallPoints",
                         "Wall points of the NekRS adapter: one per node of every wall face, "
                         "with its off-wall sample point, wall frame (t1, t2, inward n) and "
                         "volume index (docs/nekrs.md)")
      .def(py::init(&make_wall_points), py::arg("boundary_ids"), py::arg("face_to_volume"),
           py::arg("normals"), py::arg("tangents1"), py::arg("tangents2"), py::arg("x"),
           py::arg("y"), py::arg("z"), py::arg("face_nodes"), py::arg("wall_ids"),
           py::arg("height"), py::arg("faces") = 6, py::arg("surface_weights") = py::none(),
           "From NekRS-style mesh arrays: boundary_ids = EToB [elements * faces], "
           "face_to_volume = vmapM [elements * faces * face_nodes], outward normals and "
           "tangents [elements * faces * face_nodes, 3], volume coordinates x, y, z; "
           "optional surface quadrature weights [elements * faces * face_nodes]")
      .def_property_readonly("size", &WallPoints::size)
      .def("__len__", &WallPoints::size)
      .def_property_readonly("height", &WallPoints::height)
      .def_property_readonly("sample_points",
                             [](const WallPoints& self) { return rows3(self.sample_points()); })
      .def_property_readonly("wall_coordinates", [](const WallPoints& self) {
        return rows3(self.wall_coordinates());
      })
      .def_property_readonly("normals",
                             [](const WallPoints& self) { return rows3(self.normals()); },
                             "Inward unit normals [n, 3]")
      .def_property_readonly("tangents1",
                             [](const WallPoints& self) { return rows3(self.tangents1()); })
      .def_property_readonly("tangents2",
                             [](const WallPoints& self) { return rows3(self.tangents2()); })
      .def_property_readonly("volume_indices",
                             [](const WallPoints& self) {
                               return py::array_t<std::int64_t>(
                                   static_cast<py::ssize_t>(self.size()),
                                   self.volume_indices().data());
                             })
      .def_property_readonly("wall_nodes",
                             [](const WallPoints& self) {
                               return py::array_t<std::int64_t>(
                                   static_cast<py::ssize_t>(self.wall_nodes().size()),
                                   self.wall_nodes().data());
                             })
      .def_property_readonly("weights",
                             [](const WallPoints& self) {
                               return py::array_t<double>(
                                   static_cast<py::ssize_t>(self.weights().size()),
                                   self.weights().data());
                             },
                             "Surface quadrature weight of each wall point [n]")
      .def_property_readonly("on_face_edge",
                             [](const WallPoints& self) {
                               py::array_t<bool> out(static_cast<py::ssize_t>(self.size()));
                               auto view = out.mutable_unchecked<1>();
                               for (std::size_t i = 0; i < self.size(); ++i) {
                                 view(static_cast<py::ssize_t>(i)) = self.on_face_edge()[i] != 0;
                               }
                               return out;
                             },
                             "Whether each wall point lies on an edge of its face [n]")
      .def_property_readonly("multiplicity",
                             [](const WallPoints& self) {
                               return py::array_t<int>(
                                   static_cast<py::ssize_t>(self.multiplicity().size()),
                                   self.multiplicity().data());
                             })
      .def("to_wall_frame", &to_wall_frame, py::arg("velocity"), py::arg("out") = py::none(),
           "Model inputs [n, 3] = [u.t1, u.t2, u.n] of velocities [n, 3] at the sample points "
           "(float32 unless out is given)")
      .def("wall_shear_stress", &wall_shear_stress, py::arg("strain_rate"),
           py::arg("viscosity"), py::arg("out") = py::none(),
           "Targets [n, 2] = [tau.t1, tau.t2], tau = 2 mu S n (tangential part) at the wall "
           "nodes, from a strain-rate volume field [6, field_offset] in NekRS order (S11, S12, "
           "S13, S22, S23, S33); float32 unless out is given")
      .def("scatter", &scatter, py::arg("predictions"), py::arg("usrwrk"),
           py::arg("field_offset"), py::arg("component"), py::arg("field") = 0,
           "Writes column `component` (0: tau.t1, 1: tau.t2) of predictions [n, 2] (averaged "
           "over wall points sharing a volume node) into usrwrk[field * field_offset + volume "
           "index] (float64, in place)");

  m.def("wall_model_traction", &traction, py::arg("tau1"), py::arg("tau2"),
        "Traction (tr1, tr2) of the wall-model BC on the fluid for the stored wall shear stress "
        "(tau1, tau2) = [tau.t1, tau.t2]: -(tau1, tau2)");
}
