// nekrs_ml._core: the coupling driver for Python solvers (the stand-in solver drives it the way
// the NekRS adapter does). The solver's collective operations are Python callables (mpi4py);
// step() runs without the GIL and takes it back only for them.
#include "nekrs_ml/config.hpp"
#include "nekrs_ml/coupling.hpp"
#include "nekrs_ml/synthetic_channel.hpp"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <memory>
#include <string>

namespace py = pybind11;
using namespace nekrs_ml;

namespace {

// A solver's wall written in Python (tests, prototypes): a subclass of _core.WallFields
// implements wall_points(), sample_inputs(out [n, 3]), wall_targets(out [n, 2]),
// apply_wall_stress(tau [n, 2]), kinematic_viscosity() and end_run_at(step). The arrays are
// views of the coupling's buffers, valid during the call.
class PyWallFields : public WallFields {
public:
  std::size_t wall_points() override {
    py::gil_scoped_acquire gil;
    points_ = call("wall_points")().cast<std::size_t>();
    return points_;
  }
  void sample_inputs(double* inputs) override { fill("sample_inputs", inputs, 3); }
  void wall_targets(double* targets) override { fill("wall_targets", targets, 2); }
  void apply_wall_stress(const double* tau) override {
    fill("apply_wall_stress", const_cast<double*>(tau), 2, false);
  }
  double kinematic_viscosity() const override {
    py::gil_scoped_acquire gil;
    return call("kinematic_viscosity")().cast<double>();
  }
  void end_run_at(long step) override {
    py::gil_scoped_acquire gil;
    call("end_run_at")(step);
  }

private:
  py::function call(const char* name) const {
    py::function method = py::get_override(static_cast<const WallFields*>(this), name);
    if (!method) throw ConfigError(std::string("WallFields subclass: ") + name + " is not implemented");
    return method;
  }
  void fill(const char* name, double* data, py::ssize_t columns, bool writeable = true) {
    py::gil_scoped_acquire gil;
    py::array_t<double> view({static_cast<py::ssize_t>(points_), columns},
                             {columns * static_cast<py::ssize_t>(sizeof(double)),
                              static_cast<py::ssize_t>(sizeof(double))},
                             data, py::capsule(data, [](void*) {}));
    if (!writeable) view.attr("setflags")(py::arg("write") = false);
    call(name)(view);
  }

  std::size_t points_ = 0;
};

// Rank, size and node leadership are fixed; sum and barrier call back into Python.
class CallbackCollective : public Collective {
public:
  CallbackCollective(int rank, int size, bool node_leader, py::function sum, py::function barrier)
      : rank_(rank), size_(size), node_leader_(node_leader), sum_(std::move(sum)),
        barrier_(std::move(barrier)) {
    if (rank < 0 || size < 1 || rank >= size) {
      throw ConfigError("Collective: rank " + std::to_string(rank) + " of " +
                        std::to_string(size) + " is not valid");
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool node_leader() const override { return node_leader_; }

  // sum(array) returns the element-wise sum over the ranks (a new array or the same one).
  void sum(double* values, std::size_t count) override {
    py::gil_scoped_acquire gil;
    py::array_t<double> array(static_cast<py::ssize_t>(count));
    std::memcpy(array.mutable_data(), values, count * sizeof(double));
    py::array_t<double, py::array::c_style | py::array::forcecast> result = sum_(array);
    if (static_cast<std::size_t>(result.size()) != count) {
      throw ConfigError("Collective.sum returned " + std::to_string(result.size()) +
                        " values for " + std::to_string(count));
    }
    std::memcpy(values, result.data(), count * sizeof(double));
  }

  void barrier() override {
    py::gil_scoped_acquire gil;
    barrier_();
  }

  ~CallbackCollective() override {
    py::gil_scoped_acquire gil; // the callables are Python objects
    sum_ = py::function();
    barrier_ = py::function();
  }

private:
  int rank_, size_;
  bool node_leader_;
  py::function sum_, barrier_;
};

} // namespace

void bind_coupling(py::module_& m) {
  py::class_<Collective>(m, "Collective",
                         "The solver's collective operations (an interface; see CallbackCollective)");
  py::class_<CallbackCollective, Collective>(
      m, "CallbackCollective",
      "Collective operations from Python callables: sum(numpy float64 array) -> the element-wise "
      "sum over the ranks; barrier() -> None")
      .def(py::init<int, int, bool, py::function, py::function>(), py::arg("rank"),
           py::arg("size"), py::arg("node_leader"), py::arg("sum"), py::arg("barrier"));

  py::class_<WallFields, PyWallFields>(
      m, "WallFields",
      "The solver's wall fields (an interface). Subclass it in Python and implement "
      "wall_points(), sample_inputs(out), wall_targets(out), apply_wall_stress(tau), "
      "kinematic_viscosity() and end_run_at(step)")
      .def(py::init<>());
  py::class_<SyntheticChannelField, WallFields>(
      m, "SyntheticChannelField",
      "The stand-in solver's channel wall: both walls with NekRS's mirrored frames, inputs "
      "[u.t1, u.t2, u.n], targets [tau.t1, tau.t2] from Reichardt's law")
      .def(py::init<std::size_t, double, double, double, double, double, std::uint64_t, int>(),
           py::arg("points"), py::arg("re_tau"), py::arg("nu"), py::arg("h"),
           py::arg("fluctuation"), py::arg("correlation"), py::arg("seed"), py::arg("rank"))
      .def("advance", &SyntheticChannelField::advance, "One solver step of the fluctuations")
      .def("inputs",
           [](SyntheticChannelField& self) {
             py::array_t<double> out({static_cast<py::ssize_t>(self.wall_points()), py::ssize_t{3}});
             self.sample_inputs(out.mutable_data());
             return out;
           },
           "Model inputs [n, 3] of the current step")
      .def("targets",
           [](SyntheticChannelField& self) {
             py::array_t<double> out({static_cast<py::ssize_t>(self.wall_points()), py::ssize_t{2}});
             self.wall_targets(out.mutable_data());
             return out;
           },
           "Resolved wall shear stress [n, 2] of the current step")
      .def_property_readonly("applied_stress",
                             [](const SyntheticChannelField& self) {
                               const auto& v = self.applied_stress();
                               py::array_t<double> out({static_cast<py::ssize_t>(v.size() / 2),
                                                        py::ssize_t{2}});
                               std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(double));
                               return out;
                             })
      .def_property_readonly("applications", &SyntheticChannelField::applications)
      .def_property_readonly("end_step", &SyntheticChannelField::end_step)
      .def_property_readonly("points", &SyntheticChannelField::wall_points)
      .def_property_readonly("friction_velocity", &SyntheticChannelField::friction_velocity)
      .def_property_readonly("mean_velocity", &SyntheticChannelField::mean_velocity);

  py::class_<Coupling>(m, "Coupling",
                       "The per-step coupling policy (C++ nekrs_ml::Coupling), connected from the "
                       "launcher's environment")
      .def(py::init([](const std::string& par_file, Collective& comm, WallFields& fields) {
             const Config config = Config::from_par_file(par_file);
             py::gil_scoped_release release;
             return std::make_unique<Coupling>(config, comm, fields);
           }),
           py::keep_alive<1, 3>(), py::keep_alive<1, 4>(), py::arg("par_file"), py::arg("comm"),
           py::arg("fields"))
      .def("step", &Coupling::step, py::call_guard<py::gil_scoped_release>(), py::arg("tstep"),
           py::arg("time"), py::arg("last_step") = false,
           "After solver step tstep (0: the initial state); collective")
      .def("finish", &Coupling::finish, py::call_guard<py::gil_scoped_release>(),
           py::arg("tstep"), "Ends the coupling (collective); the run summary (JSON) on rank 0")
      .def_property_readonly("finished", &Coupling::finished)
      .def_property_readonly("end_step", &Coupling::end_step)
      .def_property_readonly("end_reason", &Coupling::end_reason)
      .def_property_readonly("model_version", &Coupling::model_version)
      .def_property_readonly(
          "model_features",
          [](const Coupling& self) -> py::object {
            const std::string scheme = self.model_features();
            return scheme.empty() ? py::object(py::none()) : py::object(py::str(scheme));
          },
          "The feature scheme this rank's inference calls scale for ('dimensional', "
          "'wall_units'; None before a version answered)")
      .def_property_readonly("inference_calls", &Coupling::inference_calls)
      .def_property_readonly("fallback_steps", &Coupling::fallback_steps)
      .def_property_readonly("snapshots_written", &Coupling::snapshots_written);
}
