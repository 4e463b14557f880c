// nekrs_ml._core: the workflow pieces of libnekrsml for Python — the .par configuration (the
// one parser; nekrs_ml/config.py wraps it), the wall physics, the reproducer's synthetic
// wall sampler and the solver-side training stream. Arrays are used in place (no copies) and
// the GIL is released during computation and network I/O. Errors are libnekrsml exceptions,
// translated to nekrs_ml.errors by the module (core.cpp).
#include "nekrs_ml/client.hpp"
#include "nekrs_ml/config.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/stream.hpp"
#include "nekrs_ml/wall.hpp"
#include "py_arrays.hpp"
#include "py_client.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace py = pybind11;
using namespace nekrs_ml;
using nekrs_ml::python::contiguous_shape;
using nekrs_ml::python::describe;
using nekrs_ml::python::wire_dtype;

namespace {

// --- configuration -----------------------------------------------------------------------------

py::object to_python(const Config::Value& value) {
  return std::visit(
      [](const auto& v) -> py::object {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, long long>) return py::int_(v);
        if constexpr (std::is_same_v<T, double>) return py::float_(v);
        if constexpr (std::is_same_v<T, bool>) return py::bool_(v);
        if constexpr (std::is_same_v<T, std::string>) return py::str(v);
        if constexpr (std::is_same_v<T, std::vector<long long>>) return py::cast(v);
      },
      value);
}

// {section: {key: value}} in schema order, as nekrs_ml.config.Config.as_dict() gives it.
py::dict config_dict(const Config& config) {
  py::dict sections;
  for (const auto& section : Config::sections()) sections[py::str(section)] = py::dict();
  for (const auto& option : Config::schema()) {
    py::dict section = sections[py::str(option.section)];
    section[py::str(option.key)] = to_python(config.get(option.section, option.key));
  }
  return sections;
}

// --- arrays ------------------------------------------------------------------------------------

bool is_dtype(const py::array& array, DType dtype) { return wire_dtype(array) == dtype; }

// The header of an array used in place: float32 or float64, C-contiguous.
TensorHeader header_of(const py::array& array, const char* what) {
  TensorHeader header;
  header.shape = contiguous_shape(array, what);
  if (is_dtype(array, DType::float32)) {
    header.dtype = DType::float32;
  } else if (is_dtype(array, DType::float64)) {
    header.dtype = DType::float64;
  } else {
    throw ConfigError(std::string(what) + " " + describe(array) + ": use float32 or float64");
  }
  return header;
}

template <typename T> using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// tau_w of each velocity, into a new array of the same dtype and shape.
template <typename T> py::array_t<T> shear_stress_array(const CArray<T>& u, double h, double nu) {
  py::array_t<T> tau(std::vector<py::ssize_t>(u.shape(), u.shape() + u.ndim()));
  const T* in = u.data();
  T* out = tau.mutable_data();
  const auto n = static_cast<std::size_t>(u.size());
  py::gil_scoped_release release;
  reichardt_wall_shear_stress(in, n, h, nu, out);
  return tau;
}

// A number gives a float; an array keeps its shape and stays float32 if it is float32, any
// other array-like becomes float64.
py::object shear_stress(const py::object& u, double h, double nu) {
  const bool array = py::isinstance<py::array>(u);
  if (array && is_dtype(py::reinterpret_borrow<py::array>(u), DType::float32)) {
    return shear_stress_array<float>(CArray<float>::ensure(u), h, nu);
  }
  if (!array && PyNumber_Check(u.ptr())) {
    return py::float_(reichardt_wall_shear_stress(u.cast<double>(), h, nu));
  }
  const auto values = CArray<double>::ensure(u);
  if (!values) {
    throw ConfigError("reichardt_wall_shear_stress: u must be a number or an array of numbers, "
                      "got " + std::string(py::str(py::type::handle_of(u).attr("__name__"))));
  }
  return shear_stress_array<double>(values, h, nu);
}

// Writes the sampler's current field into caller arrays [points, 1] of one float dtype.
void fill(const ChannelWallSampler& sampler, py::array inputs, py::array targets) {
  const TensorHeader in = header_of(inputs, "inputs");
  const TensorHeader out = header_of(targets, "targets");
  const std::vector<std::uint64_t> expected = {sampler.points(), 1};
  if (in.shape != expected || out.shape != expected || in.dtype != out.dtype) {
    throw ConfigError("ChannelWallSampler.fill: inputs and targets must both be float32 or "
                      "both float64 of shape [" + std::to_string(sampler.points()) +
                      ", 1], got inputs " + describe(inputs) + ", targets " + describe(targets));
  }
  if (!inputs.writeable() || !targets.writeable()) {
    throw ConfigError("ChannelWallSampler.fill: the output arrays must be writeable");
  }
  void* in_data = inputs.mutable_data();
  void* out_data = targets.mutable_data();
  py::gil_scoped_release release;
  if (in.dtype == DType::float32) {
    sampler.fill(static_cast<float*>(in_data), static_cast<float*>(out_data));
  } else {
    sampler.fill(static_cast<double*>(in_data), static_cast<double*>(out_data));
  }
}

// --- training stream ---------------------------------------------------------------------------

// The client argument of the stream functions, and how to run code on it without the GIL.
using PythonClient = nekrs_ml::python::PyClient;

template <typename Fn> auto with_client(PythonClient& client, Fn&& fn) {
  return client.call(std::forward<Fn>(fn)); // without the GIL, one call at a time
}

// A TrainingStream together with the client it talks through (kept alive by keep_alive).
class PyStream {
public:
  PyStream(PythonClient& client, StreamOptions options)
      : client_(client), stream_(with_client(client, [&](Client& native) {
          return std::make_unique<TrainingStream>(native, std::move(options)); // registers the rank
        })) {}

  const TrainingStream& stream() const { return *stream_; }

  py::dict put(long step, double time, const py::array& inputs, const py::array& targets) {
    const TensorHeader in = header_of(inputs, "inputs");
    const TensorHeader out = header_of(targets, "targets");
    const void* in_data = inputs.data(); // `inputs` and `targets` keep the data alive meanwhile
    const void* out_data = targets.data();
    const PutResult result = with_client(client_, [&](Client&) {
      return stream_->put(step, time, in, in_data, out, out_data);
    });
    py::dict reply;
    reply["written"] = result.written;
    reply["dropped"] = result.dropped;
    reply["dropped_oldest"] = result.dropped_oldest;
    reply["waited"] = result.waited;
    reply["seconds"] = result.seconds;
    reply["warning"] = result.warning;
    return reply;
  }

private:
  PythonClient& client_;
  std::unique_ptr<TrainingStream> stream_;
};

std::unique_ptr<PyStream> make_stream(PythonClient& client, const std::string& ns, int rank,
                                      int sample_interval, int max_snapshots,
                                      const std::string& when_full, double wait_timeout,
                                      double poll_interval) {
  StreamOptions options;
  options.ns = ns;
  options.rank = rank;
  options.sample_interval = sample_interval;
  options.max_snapshots = max_snapshots;
  options.when_full = when_full_from_name(when_full);
  options.wait_timeout_s = wait_timeout;
  options.poll_interval_s = poll_interval;
  return std::make_unique<PyStream>(client, std::move(options));
}

} // namespace

void bind_workflow(py::module_& m) {
  // --- configuration ---
  py::class_<Config>(m, "Config", "The validated [NEKRS_ML] and [REPRODUCER] options of a case "
                                  "(nekrs_ml::Config); nekrs_ml.config.Config wraps it")
      .def(py::init<std::string>(), py::arg("source") = "", "Every option at its default")
      .def_static("from_text", &Config::from_text, py::arg("text"), py::arg("source") = "<text>")
      .def_static("from_par_file", &Config::from_par_file, py::arg("path"))
      .def("set", &Config::set, py::arg("section"), py::arg("key"), py::arg("value_text"),
           "Validates and sets one option from its text")
      .def("get",
           [](const Config& config, const std::string& section, const std::string& key) {
             return to_python(config.get(section, key));
           },
           py::arg("section"), py::arg("key"))
      .def("as_dict", &config_dict, "{section: {key: value}} in schema order")
      .def_property_readonly("source", &Config::source);
  m.def("config_schema",
        [] {
          py::list rows;
          for (const auto& o : Config::schema()) {
            rows.append(py::make_tuple(o.section, o.key, o.type, o.default_text, o.unit,
                                       o.choices, o.description));
          }
          return rows;
        },
        "The rows of config_schema.tsv compiled into the library: (section, key, type, default, "
        "unit, choices, description)");
  m.def("load_config",
        [](const std::string& path) { return config_dict(Config::from_par_file(path)); },
        py::arg("path"), "Reads and validates a case .par file: {section: {key: value}}");
  m.def("config_from_text",
        [](const std::string& text, const std::string& source) {
          return config_dict(Config::from_text(text, source));
        },
        py::arg("text"), py::arg("source") = "<text>",
        "Validates .par text: {section: {key: value}}");

  // --- wall physics ---
  m.def("reichardt_uplus", py::vectorize(reichardt_uplus), py::arg("yplus"),
        "Reichardt's u+ at y+");
  m.def("reichardt_friction_velocity", py::vectorize(&reichardt_friction_velocity), py::arg("u"),
        py::arg("h"), py::arg("nu"), "Friction velocity u_tau of the velocity u at height h");
  m.def("reichardt_wall_shear_stress", &shear_stress, py::arg("u"), py::arg("h"), py::arg("nu"),
        "Wall shear stress u_tau^2 of the velocity u at height h: a float for a number, else an "
        "array of the same shape (float32 stays float32, anything else is float64)");

  py::class_<ChannelWallSampler>(m, "ChannelWallSampler",
                                 "The reproducer's synthetic off-wall velocity and its Reichardt "
                                 "wall shear stress, per wall point")
      .def(py::init<std::size_t, double, double, double, double, double, std::uint64_t, int>(),
           py::arg("points"), py::arg("re_tau"), py::arg("nu"), py::arg("h"),
           py::arg("fluctuation"), py::arg("correlation"), py::arg("seed"), py::arg("rank"))
      .def("advance", &ChannelWallSampler::advance, "One solver step of the fluctuations")
      .def("fill", &fill, py::arg("inputs"), py::arg("targets"),
           "Writes velocities and wall shear stresses into arrays [points, 1] (float32 or "
           "float64, C-contiguous)")
      .def_property_readonly("points", &ChannelWallSampler::points)
      .def_property_readonly("mean_velocity", &ChannelWallSampler::mean_velocity)
      .def_property_readonly("friction_velocity", &ChannelWallSampler::friction_velocity);

  // --- training stream ---
  py::class_<PyStream>(m, "TrainingStream",
                       "A solver rank's training stream: stores snapshots and announces them, "
                       "keeping at most max_snapshots (docs/protocol.md)")
      .def(py::init(&make_stream), py::keep_alive<1, 2>(), py::arg("client"),
           py::arg("namespace") = NKML_KEY_DEFAULT_NAMESPACE, py::arg("rank") = 0, py::arg("sample_interval") = 10,
           py::arg("max_snapshots") = 20, py::arg("when_full") = "drop",
           py::arg("wait_timeout") = 60.0, py::arg("poll_interval") = 0.005)
      .def("due", [](const PyStream& self, long step) { return self.stream().due(step); },
           py::arg("step"), "Whether step is a sampling step")
      .def("put", &PyStream::put, py::arg("step"), py::arg("time"), py::arg("inputs"),
           py::arg("targets"),
           "Stores inputs [n, n_in] and targets [n, n_out] and announces them; returns a dict "
           "(written, dropped, dropped_oldest, waited, seconds, warning)")
      .def_property_readonly("snapshots_written",
                             [](const PyStream& self) { return self.stream().snapshots_written(); })
      .def_property_readonly("snapshots_dropped",
                             [](const PyStream& self) { return self.stream().snapshots_dropped(); })
      .def_property_readonly("next_seq",
                             [](const PyStream& self) { return self.stream().next_seq(); })
      .def_static("mark_done",
                  [](PythonClient& client, const std::string& ns) {
                    with_client(client,
                                [&](Client& native) { TrainingStream::mark_done(native, ns); });
                  },
                  py::arg("client"), py::arg("namespace"), "Marks the solver as finished")
      .def_static("stop_requested",
                  [](PythonClient& client, const std::string& ns) {
                    return with_client(client, [&](Client& native) {
                      return TrainingStream::stop_requested(native, ns);
                    });
                  },
                  py::arg("client"), py::arg("namespace"),
                  "Whether the trainer asked the solver to stop");
}
