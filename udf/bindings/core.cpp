// nekrs_ml._core: the C++ client and codec for Python. Arrays are sent from and received into
// numpy memory without copies, and the GIL is released during network I/O.
#include "nekrs_ml/client.hpp"
#include "nekrs_ml/codec.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inprocess.hpp"
#include "nekrs_ml/inference.hpp"
#include "nekrs_ml/version.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "py_arrays.hpp"
#include "py_client.hpp"

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>

namespace py = pybind11;
using namespace nekrs_ml;
using nekrs_ml::python::PyClient;
using nekrs_ml::python::wire_dtype;

namespace {

constexpr DType kDTypes[] = {DType::float32, DType::float64, DType::int8,  DType::int16,
                             DType::int32,   DType::int64,   DType::uint8, DType::uint16};

// --- exceptions ------------------------------------------------------------------------------

py::object python_error_class(const char* name) {
  PYBIND11_CONSTINIT static py::gil_safe_call_once_and_store<py::object> errors_module;
  const py::object& errors =
      errors_module
          .call_once_and_store_result([] { return py::module_::import("nekrs_ml.errors"); })
          .get_stored();
  return errors.attr(name);
}

void raise(const char* name, const std::exception& error) {
  PyErr_SetString(python_error_class(name).ptr(), error.what());
}

void translate_errors(std::exception_ptr error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const PackageMissingError& e) {
    raise("PackageMissingError", e);
  } catch (const KeyNotFoundError& e) {
    raise("KeyNotFoundError", e);
  } catch (const TensorFormatError& e) {
    raise("TensorFormatError", e);
  } catch (const AuthenticationError& e) {
    raise("AuthenticationError", e);
  } catch (const ConnectionError& e) {
    raise("ConnectionError", e);
  } catch (const WorkerUnavailableError& e) {
    raise("WorkerUnavailableError", e);
  } catch (const ModelError& e) {
    raise("ModelError", e);
  } catch (const TimeoutError& e) {
    raise("TimeoutError", e);
  } catch (const ServerError& e) {
    raise("ServerError", e);
  } catch (const ConfigError& e) {
    raise("ConfigError", e);
  } catch (const Error& e) {
    raise("NekrsMLError", e);
  }
}

// --- arrays ------------------------------------------------------------------------------------

std::string valid_dtypes() {
  std::string names;
  for (DType dtype : kDTypes) names += (names.empty() ? "" : ", ") + std::string(dtype_name(dtype));
  return names;
}

std::string key_prefix(const std::string& key) {
  return key.empty() ? std::string() : "key '" + key + "': ";
}

DType dtype_of_array(const py::array& array, const std::string& key) {
  if (const std::optional<DType> wire = wire_dtype(array)) return *wire;
  const py::dtype dtype = array.dtype();
  const std::string name = py::str(dtype.attr("name"));
  if (dtype.byteorder() == '>') {
    throw TensorFormatError(key_prefix(key) + "array dtype " + std::string(py::str(dtype)) +
                            " is big-endian; pass a.astype(a.dtype.newbyteorder('='))");
  }
  for (DType candidate : kDTypes) {
    if (name == dtype_name(candidate)) return candidate;
  }
  throw TensorFormatError(key_prefix(key) + "array dtype " + name +
                          " is not supported; valid choices: " + valid_dtypes());
}

// `object` itself, which must be a numpy.ndarray: nothing is converted (as in the Python client).
py::array ndarray(const py::handle& object, const std::string& key) {
  if (!py::isinstance<py::array>(object)) {
    throw TensorFormatError(key_prefix(key) + "expected a numpy.ndarray, got " +
                            std::string(py::str(py::type::handle_of(object).attr("__name__"))));
  }
  return py::reinterpret_borrow<py::array>(object);
}

// What can be sent: an ndarray (from its own memory) or a numpy scalar (as a 0-d tensor).
py::array array_to_send(const py::handle& object, const std::string& key) {
  if (py::isinstance<py::array>(object)) return py::reinterpret_borrow<py::array>(object);
  if (py::isinstance(object, py::module_::import("numpy").attr("generic"))) {
    return py::array::ensure(object);
  }
  return ndarray(object, key);
}

// The header of an array that can be sent from its own memory as is.
TensorHeader header_of(const py::array& array, const std::string& key) {
  if (!(array.flags() & py::array::c_style)) {
    throw TensorFormatError(key_prefix(key) +
                            "array is not C-contiguous; pass numpy.ascontiguousarray(a)");
  }
  TensorHeader header{dtype_of_array(array, key), {}};
  for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) {
    header.shape.push_back(static_cast<std::uint64_t>(array.shape(axis)));
  }
  return header;
}

py::array new_array(const TensorHeader& header) {
  std::vector<py::ssize_t> shape(header.shape.begin(), header.shape.end());
  return py::array(py::dtype(dtype_name(header.dtype)), shape);
}

py::list bytes_list(const std::vector<std::string>& items) {
  py::list list;
  for (const std::string& item : items) list.append(py::bytes(item));
  return list;
}

std::vector<std::string> addresses_from(const py::object& addresses) {
  if (py::isinstance<py::str>(addresses)) return {addresses.cast<std::string>()};
  return addresses.cast<std::vector<std::string>>();
}

// --- Client ------------------------------------------------------------------------------------

// A Client usable from several Python threads: calls run one at a time, without the GIL.
std::unique_ptr<PyClient> make_client(const py::object& addresses,
                                      const std::optional<std::string>& password, bool cluster,
                                      double timeout, double connect_timeout) {
  ClientOptions options;
  options.addresses = addresses_from(addresses);
  options.password = password.value_or("");
  options.cluster = cluster;
  options.timeout_s = timeout;
  options.connect_timeout_s = connect_timeout;
  return std::make_unique<PyClient>(options);
}

void put_tensor(PyClient& self, const std::string& key, const py::object& object) {
  const py::array array = array_to_send(object, key);
  const TensorHeader header = header_of(array, key);
  const void* data = array.data();
  self.call([&](Client& client) { client.put_tensor(key, header, data); });
}

void put_tensors(PyClient& self, const std::vector<std::pair<std::string, py::object>>& items) {
  std::vector<py::array> arrays; // keeps arrays made from numpy scalars alive
  std::vector<TensorView> views;
  for (const auto& [key, object] : items) {
    arrays.push_back(array_to_send(object, key));
    views.push_back(TensorView{key, header_of(arrays.back(), key), arrays.back().data()});
  }
  self.call([&](Client& client) { client.put_tensors(views); });
}

py::array get_tensor(PyClient& self, const std::string& key) {
  py::array result;
  self.call([&](Client& client) {
    client.get_tensor(key, [&](const TensorHeader& header) {
      py::gil_scoped_acquire acquire;
      result = new_array(header);
      return result.mutable_data();
    });
  });
  return result;
}

py::object get_tensor_into(PyClient& self, const std::string& key, const py::object& out) {
  py::array array = ndarray(out, key);
  if (!array.writeable())
    throw TensorFormatError(key_prefix(key) + "the output array is read-only");
  const TensorHeader expected = header_of(array, key);
  void* data = array.mutable_data();
  self.call([&](Client& client) {
    client.get_tensor(key, [&](const TensorHeader& header) {
      if (header.dtype != expected.dtype || header.shape != expected.shape) {
        throw TensorFormatError("key '" + key + "' holds " + header.describe() +
                                " but the output array is " + expected.describe());
      }
      return data;
    });
  });
  return out;
}

// Polls in short slices so that Ctrl-C interrupts a long wait.
bool poll_key(PyClient& self, const std::string& key, double timeout, double interval) {
  using Clock = std::chrono::steady_clock;
  constexpr double kSliceSeconds = 0.1;
  const Clock::time_point deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                        std::chrono::duration<double>(timeout));
  for (;;) {
    const double remaining =
        std::max(0.0, std::chrono::duration<double>(deadline - Clock::now()).count());
    const double slice = std::min(remaining, kSliceSeconds);
    if (self.call([&](Client& client) { return client.poll_key(key, slice, interval); }))
      return true;
    if (remaining <= slice) return false;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

py::object get_string(PyClient& self, const std::string& key) {
  std::string value;
  const bool found = self.call([&](Client& client) { return client.get_string(key, value); });
  if (!found) return py::none();
  return py::bytes(value);
}

std::string repr(const PyClient& self) {
  const ClientOptions& options = self.options();
  std::string text = "Client(addresses=" + std::string(py::repr(py::cast(options.addresses))) +
                     ", cluster=" + (options.cluster ? "True" : "False") +
                     ", timeout=" + std::string(py::repr(py::float_(options.timeout_s)));
  return text + (self.closed() ? ", closed=True)" : ")");
}

// --- codec -------------------------------------------------------------------------------------

py::bytes encode_tensor_bytes(const py::object& object) {
  const py::array array = array_to_send(object, "");
  return py::bytes(encode_tensor(header_of(array, ""), array.data()));
}

py::array decode_tensor_bytes(const py::bytes& value, const std::string& key) {
  char* data = nullptr;
  py::ssize_t size = 0;
  if (PyBytes_AsStringAndSize(value.ptr(), &data, &size) != 0) throw py::error_already_set();
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data);
  const TensorHeader header = decode_value(bytes, static_cast<std::size_t>(size), key);
  py::array array = new_array(header);
  if (header.data_bytes() > 0) {
    std::memcpy(array.mutable_data(), bytes + header.header_bytes(), header.data_bytes());
  }
  return array;
}

py::list dtype_names() {
  py::list names;
  for (DType dtype : kDTypes) names.append(dtype_name(dtype));
  return names;
}

} // namespace

void bind_workflow(py::module_& m);    // workflow.cpp: config, wall physics, training stream
void bind_inference(py::module_& m);   // inference.cpp: InferenceClient
void bind_wall_points(py::module_& m); // wall_points.cpp: wall-point bookkeeping of the adapter
void bind_coupling(py::module_& m);    // coupling.cpp: the coupling driver, the stand-in's wall
void bind_keys(py::module_& m);        // keys.cpp: the key schema and the protocol constants
void bind_messages(py::class_<PyClient>& client); // messages.cpp: pipelines and list messages

PYBIND11_MODULE(_core, m) {
  m.doc() = "C++ core of nekrs_ml: the hiredis client and the tensor codec";
  // the library's version (built from pyproject.toml's) and the one of the headers compiled in
  m.attr("__version__") = library_version();
  m.attr("header_version") = nekrs_ml::version();
  py::register_exception_translator(&translate_errors);

  py::class_<PyClient> client(m, "Client",
                       "Client of the nekrs_ml database (Redis or Redis Cluster). Arrays are sent "
                       "and received without copies; the GIL is released during I/O.");
  client.def(py::init(&make_client), py::arg("addresses"), py::arg("password") = py::none(),
           py::arg("cluster") = false, py::arg("timeout") = 10.0, py::arg("connect_timeout") = 5.0)
      .def_static(
          "from_env", [] { return std::make_unique<PyClient>(Client::options_from_env()); },
          "Client configured from NEKRS_ML_ADDRESSES, NEKRS_ML_PASSWORD_FILE, "
          "NEKRS_ML_MODE and NEKRS_ML_TIMEOUT")
      .def("put_tensor", &put_tensor, py::arg("key"), py::arg("array"),
           "Stores a C-contiguous array (sent from its own memory)")
      .def("put_tensors", &put_tensors, py::arg("items"),
           "Stores a list of (key, array) pairs in one pipelined round trip per server")
      .def("get_tensor", &get_tensor, py::arg("key"), "Reads a tensor into a new array")
      .def("get_tensor_into", &get_tensor_into, py::arg("key"), py::arg("out"),
           "Reads a tensor into `out` (same dtype and shape, C-contiguous, writeable); returns out")
      .def(
          "exists",
          [](PyClient& self, const std::string& key) {
            return self.call([&](Client& client) { return client.exists(key); });
          },
          py::arg("key"))
      .def("poll_key", &poll_key, py::arg("key"), py::arg("timeout"), py::arg("interval") = 0.005,
           "Waits until the key exists; returns False after `timeout` seconds")
      .def(
          "delete",
          [](PyClient& self, const std::string& key) {
            return self.call([&](Client& client) { return client.delete_key(key); });
          },
          py::arg("key"), "Deletes the key; returns the number of keys removed (0 or 1)")
      .def(
          "set_string",
          [](PyClient& self, const std::string& key, const std::string& value) {
            self.call([&](Client& client) { client.set_string(key, value); });
          },
          py::arg("key"), py::arg("value"))
      .def("get_string", &get_string, py::arg("key"), "The value as bytes, or None if missing")
      .def(
          "increment",
          [](PyClient& self, const std::string& key, long long by) {
            return self.call([&](Client& client) { return client.increment(key, by); });
          },
          py::arg("key"), py::arg("by") = 1)
      .def(
          "list_push",
          [](PyClient& self, const std::string& key, const std::string& value) {
            return self.call([&](Client& client) { return client.list_push(key, value); });
          },
          py::arg("key"), py::arg("value"), "Appends to a list; returns its new length")
      .def(
          "list_length",
          [](PyClient& self, const std::string& key) {
            return self.call([&](Client& client) { return client.list_length(key); });
          },
          py::arg("key"))
      .def(
          "list_range",
          [](PyClient& self, const std::string& key, long long start, long long stop) {
            return bytes_list(
                self.call([&](Client& client) { return client.list_range(key, start, stop); }));
          },
          py::arg("key"), py::arg("start") = 0, py::arg("stop") = -1)
      .def(
          "list_trim",
          [](PyClient& self, const std::string& key, long long start, long long stop) {
            self.call([&](Client& client) { client.list_trim(key, start, stop); });
          },
          py::arg("key"), py::arg("start"), py::arg("stop"))
      .def(
          "command",
          [](PyClient& self, const std::vector<std::string>& argv, const std::string& key) {
            return py::bytes(self.call([&](Client& client) { return client.command(argv, key); }));
          },
          py::arg("argv"), py::arg("key") = "",
          "Runs one command routed by `key`; integers come back as their decimal text, nil as b''")
      .def_property(
          "timeout", [](const PyClient& self) { return self.options().timeout_s; },
          &PyClient::set_timeout, "Seconds each call may take")
      .def_property_readonly("addresses",
                             [](const PyClient& self) { return self.options().addresses; })
      .def_property_readonly("cluster", [](const PyClient& self) { return self.options().cluster; })
      .def("close", &PyClient::close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyClient& self, const py::args&) { self.close(); })
      .def("__repr__", &repr);
  bind_messages(client);

  m.def("encode_tensor", &encode_tensor_bytes, py::arg("array"),
        "Encodes a C-contiguous array in the nekrs_ml wire format");
  m.def("decode_tensor", &decode_tensor_bytes, py::arg("value"), py::arg("key") = "",
        "Decodes a value of the nekrs_ml wire format into a new array");
  m.def("key_slot", &key_slot, py::arg("key"), "Redis Cluster hash slot of a key");
  m.def("dtype_names", &dtype_names, "Names of the supported dtypes, in wire-code order");

  bind_workflow(m);
  bind_inference(m);
  bind_wall_points(m);
  bind_coupling(m);
  bind_keys(m);
}
