// nekrs_ml._core: the solver side of online inference for Python (the reproducer uses it the
// way the NekRS adapter does). Inputs are sent from and predictions received into numpy memory
// without copies, with the GIL released.
#include "nekrs_ml/client.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inference.hpp"
#include "nekrs_ml/inprocess.hpp"
#include "nekrs_ml/model_weights.hpp"
#include "py_arrays.hpp"
#include "py_client.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace nekrs_ml;
using nekrs_ml::python::contiguous_shape;
using nekrs_ml::python::describe;
using nekrs_ml::python::PyClient;
using nekrs_ml::python::wire_dtype;

namespace {

// The header of a C-contiguous array of one of the wire dtypes, used in place.
TensorHeader header_of(const py::array& array, const char* what) {
  std::vector<std::uint64_t> shape = contiguous_shape(array, what);
  const std::optional<DType> wire = wire_dtype(array);
  // dtype_from_name names the valid dtypes in its error
  return TensorHeader{wire ? *wire : dtype_from_name(std::string(py::str(array.dtype()))),
                      std::move(shape)};
}

// One call of an inference backend from `inputs` into `out` (numpy arrays used in place, the
// GIL released); returns {'version', 'seconds', 'shape'}.
py::dict run_on_arrays(PyClient& client, InferenceBackend& backend, const std::string& model,
                       const py::array& inputs, py::array out) {
  const TensorHeader in = header_of(inputs, "inputs");
  header_of(out, "out");
  if (!out.writeable()) throw ConfigError("out " + describe(out) + " is not writeable");
  const void* in_data = inputs.data();
  void* out_data = out.mutable_data();
  const auto capacity = static_cast<std::size_t>(out.nbytes());
  const InferenceResult result = client.call([&](Client&) {
    return backend.run(model, in, in_data, out_data, capacity);
  });
  py::dict reply;
  reply["version"] = result.version;
  reply["seconds"] = result.seconds;
  reply["shape"] = py::tuple(py::cast(result.header.shape));
  return reply;
}

// An InferenceClient together with the client it talks through (kept alive by keep_alive).
class PyInference {
public:
  PyInference(PyClient& client, InferenceOptions options)
      : client_(client), inference_(client.call([&](Client& native) {
          return std::make_unique<InferenceClient>(native, std::move(options));
        })) {}

  // Predictions into `out` (C-contiguous, writeable, large enough); returns the model version.
  py::dict run(const std::string& model, const py::array& inputs, py::array out) {
    return run_on_arrays(client_, *inference_, model, inputs, std::move(out));
  }

  bool worker_alive() {
    return client_.call([&](Client&) { return inference_->worker_alive(); });
  }

  const InferenceClient& native() const { return *inference_; }

private:
  PyClient& client_;
  std::unique_ptr<InferenceClient> inference_;
};

std::unique_ptr<PyInference> make_inference(PyClient& client, const std::string& ns, int rank,
                                            int workers, double timeout, double heartbeat_check,
                                            const std::string& model_ns) {
  InferenceOptions options;
  options.ns = ns;
  options.model_ns = model_ns;
  options.rank = rank;
  options.workers = workers;
  options.timeout_s = timeout;
  options.heartbeat_check_s = heartbeat_check;
  return std::make_unique<PyInference>(client, std::move(options));
}

// The in-process backend (libnekrsml_torch, loaded at run time) with the client it reads the
// registry through.
class PyInprocess {
public:
  PyInprocess(PyClient& client, InprocessOptions options)
      : client_(client), backend_(client.call([&](Client& native) {
          return make_inprocess_backend(native, options);
        })) {}

  py::dict run(const std::string& model, const py::array& inputs, py::array out) {
    return run_on_arrays(client_, *backend_, model, inputs, std::move(out));
  }

  std::uint64_t refresh(const std::string& model) {
    return client_.call([&](Client&) { return backend_->refresh(model); });
  }

  double last_swap_seconds() const { return backend_->last_swap_seconds(); }
  std::string torch_version() const { return backend_->torch_version(); }
  std::string model_state(const std::string& model) { return backend_->model_state(model); }

private:
  PyClient& client_;
  std::unique_ptr<InprocessBackend> backend_;
};

std::unique_ptr<PyInprocess> make_inprocess(PyClient& client, const std::string& ns,
                                            const std::string& device, int threads,
                                            double reload_interval, const std::string& library) {
  InprocessOptions options;
  options.ns = ns;
  options.device = device;
  options.threads = threads;
  options.reload_interval_s = reload_interval;
  options.library = library;
  return std::make_unique<PyInprocess>(client, std::move(options));
}

py::dict describe_weights(const py::bytes& blob) {
  const ModelWeights weights = parse_model_weights(std::string(blob));
  py::dict result;
  result["graph"] = weights.graph;
  result["n_in"] = weights.n_in;
  result["n_out"] = weights.n_out;
  py::list tensors;
  for (const auto& tensor : weights.tensors) {
    std::vector<float> values(weights.values(tensor), weights.values(tensor) + tensor.bytes / 4);
    tensors.append(py::make_tuple(tensor.name, py::tuple(py::cast(tensor.shape)), values));
  }
  result["tensors"] = tensors;
  return result;
}

} // namespace

void bind_inference(py::module_& m) {
  py::class_<PyInprocess>(m, "InprocessBackend",
                          "The model evaluated in this process from its AOTInductor package "
                          "(libnekrsml_torch), following the registry's current version")
      .def(py::init(&make_inprocess), py::keep_alive<1, 2>(), py::arg("client"),
           py::arg("namespace") = NKML_KEY_DEFAULT_NAMESPACE, py::arg("device") = "cpu", py::arg("threads") = 1,
           py::arg("reload_interval") = 0.25, py::arg("library") = "")
      .def("run", &PyInprocess::run, py::arg("model"), py::arg("inputs"), py::arg("out"),
           "Predicts `out` from `inputs` [points, features]; returns {'version', 'seconds', 'shape'}")
      .def("refresh", &PyInprocess::refresh, py::arg("model"),
           "Checks the registry for a newer version now; returns the version in use (0: none)")
      .def("model_state", &PyInprocess::model_state, py::arg("model"),
           "JSON of what the backend holds for `model`: state (loaded, waiting, refused, "
           "unknown), version, waiting_for_version, graph, device, torch, reason")
      .def_property_readonly("last_swap_seconds", &PyInprocess::last_swap_seconds)
      .def_property_readonly("torch_version", &PyInprocess::torch_version);
  m.def("inprocess_library_path", [](const std::string& library) {
    InprocessOptions options;
    options.library = library;
    return inprocess_library_path(options);
  }, py::arg("library") = "", "The libnekrsml_torch the in-process backend would load");
  m.def("parse_model_weights", &describe_weights, py::arg("blob"),
        "The weights blob as the C++ core reads it: {'graph', 'n_in', 'n_out', 'tensors': "
        "[(name, shape, values)]}");

  py::class_<PyInference>(m, "InferenceClient",
                          "A solver rank's inference calls: request to its model worker, reply "
                          "into the caller's array (docs/protocol.md)")
      .def(py::init(&make_inference), py::keep_alive<1, 2>(), py::arg("client"),
           py::arg("namespace") = NKML_KEY_DEFAULT_NAMESPACE, py::arg("rank") = 0, py::arg("workers") = 1,
           py::arg("timeout") = 10.0, py::arg("heartbeat_check") = 1.0,
           py::arg("model_namespace") = "",
           "model_namespace: where the model workers serve (their queues and heartbeats), when "
           "several solvers share them; empty: `namespace`. The replies come to `namespace`.")
      .def("run", &PyInference::run, py::arg("model"), py::arg("inputs"), py::arg("out"),
           "Predicts `out` from `inputs` [points, features] with the current version of "
           "`model`; returns {'version', 'seconds', 'shape'}")
      .def("worker_alive", &PyInference::worker_alive,
           "True when this rank's model worker has a live heartbeat")
      .def_property_readonly("queue_key",
                             [](const PyInference& self) { return self.native().queue_key(); })
      .def_property_readonly("heartbeat_key",
                             [](const PyInference& self) { return self.native().heartbeat_key(); })
      .def_property_readonly(
          "model_namespace", [](const PyInference& self) { return self.native().model_namespace(); })
      .def("reply_key", [](const PyInference& self, const std::string& model) {
        return self.native().reply_key(model);
      }, py::arg("model"));
}
