// nekrs_ml._core: pipelined raw commands and list messages on the Client (the Python client's
// hot path). Arguments are sent from the memory of bytes objects and numpy arrays without
// copies, and the GIL is released during network I/O.
#include "nekrs_ml/client.hpp"
#include "nekrs_ml/codec.hpp"
#include "nekrs_ml/errors.hpp"
#include "py_arrays.hpp"
#include "py_client.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace py = pybind11;
using namespace nekrs_ml;
using nekrs_ml::python::contiguous_shape;
using nekrs_ml::python::PyClient;
using nekrs_ml::python::wire_dtype;

namespace {

// Holds the Python objects whose memory the pieces of a pipeline point at.
class Pieces {
public:
  // One argument: str (UTF-8), bytes, int, an object with the buffer protocol (bytearray,
  // memoryview, C-contiguous numpy array), or a list/tuple of those sent back to back.
  Command::Argument argument(const py::handle& value) {
    Command::Argument pieces;
    if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
      for (const py::handle& part : value) pieces.push_back(piece(part));
    } else {
      pieces.push_back(piece(value));
    }
    return pieces;
  }

private:
  std::string_view piece(const py::handle& value) {
    if (py::isinstance<py::bytes>(value)) {
      char* data = nullptr;
      py::ssize_t size = 0;
      if (PyBytes_AsStringAndSize(value.ptr(), &data, &size) != 0) throw py::error_already_set();
      kept_.push_back(py::reinterpret_borrow<py::object>(value));
      return {data, static_cast<std::size_t>(size)};
    }
    if (py::isinstance<py::str>(value)) {
      py::ssize_t size = 0;
      const char* data = PyUnicode_AsUTF8AndSize(value.ptr(), &size);
      if (data == nullptr) throw py::error_already_set();
      kept_.push_back(py::reinterpret_borrow<py::object>(value));
      return {data, static_cast<std::size_t>(size)};
    }
    if (py::isinstance<py::int_>(value)) {
      const std::string& text = texts_.emplace_back(std::string(py::str(value)));
      return text;
    }
    if (!PyObject_CheckBuffer(value.ptr())) {
      throw ConfigError("pipeline: an argument must be str, bytes, int or a buffer, got " +
                        std::string(py::str(py::type::handle_of(value).attr("__name__"))));
    }
    // PyBUF_SIMPLE: the exporter refuses (BufferError) memory that is not contiguous
    Py_buffer& view = buffers_.emplace_back();
    if (PyObject_GetBuffer(value.ptr(), &view, PyBUF_SIMPLE) != 0) {
      buffers_.pop_back();
      throw py::error_already_set();
    }
    return {static_cast<const char*>(view.buf), static_cast<std::size_t>(view.len)};
  }

public:
  Pieces() = default;
  Pieces(const Pieces&) = delete;
  Pieces& operator=(const Pieces&) = delete;
  ~Pieces() {
    for (Py_buffer& view : buffers_) PyBuffer_Release(&view);
  }

private:
  std::vector<py::object> kept_;
  std::deque<std::string> texts_;
  std::deque<Py_buffer> buffers_;
};

// The key a command is routed by: its first argument after the command name (as redis-py).
std::string routing_key(const Command& command) {
  if (command.args.size() < 2) return {};
  std::string key;
  for (std::string_view piece : command.args[1]) key += piece;
  return key;
}

py::object python_reply(const CommandReply& reply) {
  switch (reply.type) {
  case CommandReply::Type::integer: return py::int_(reply.integer);
  case CommandReply::Type::text: return py::bytes(reply.text);
  case CommandReply::Type::error:
    return py::module_::import("nekrs_ml.errors").attr("ServerError")(reply.text);
  case CommandReply::Type::array: {
    py::list items;
    for (const CommandReply& element : reply.elements) items.append(python_reply(element));
    return std::move(items);
  }
  default: return py::none();
  }
}

py::list pipeline(PyClient& self, const py::sequence& commands, bool raise_on_error) {
  Pieces pieces;
  std::vector<Command> native;
  for (const py::handle& command : commands) {
    Command item;
    for (const py::handle& arg : command) item.args.push_back(pieces.argument(arg));
    if (item.args.empty()) throw ConfigError("pipeline: a command without arguments");
    item.key = routing_key(item);
    native.push_back(std::move(item));
  }
  const std::vector<CommandReply> replies =
      self.call([&](Client& client) { return client.pipeline(native); });
  py::list results;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    if (raise_on_error && replies[i].is_error()) {
      std::string name;
      for (std::string_view piece : native[i].args[0]) name += piece;
      throw ServerError(name + " '" + native[i].key + "': server error: " + replies[i].text);
    }
    results.append(python_reply(replies[i]));
  }
  return results;
}

TensorHeader header_of(const py::array& array, const std::string& key) {
  const std::string what = "message for '" + key + "': array";
  std::vector<std::uint64_t> shape = contiguous_shape(array, what.c_str());
  const std::optional<DType> wire = wire_dtype(array);
  // dtype_from_name names the valid dtypes in its error
  return TensorHeader{wire ? *wire : dtype_from_name(std::string(py::str(array.dtype()))),
                      std::move(shape)};
}

long long push_message(PyClient& self, const std::string& key, const py::bytes& envelope,
                       const py::object& object) {
  if (!py::isinstance<py::array>(object)) {
    throw TensorFormatError("push_message '" + key + "': expected a numpy.ndarray, got " +
                            std::string(py::str(py::type::handle_of(object).attr("__name__"))));
  }
  const py::array array = py::reinterpret_borrow<py::array>(object);
  const TensorHeader header = header_of(array, key);
  const std::string prelude = envelope;
  const void* data = array.data();
  return self.call(
      [&](Client& client) { return client.push_message(key, prelude, header, data); });
}

// BLPOP: None when nothing came within `wait` s; else (envelope, ndarray) when
// `tensor_follows(envelope)`, or (envelope, bytes) otherwise.
py::object pop_message(PyClient& self, const std::string& key, double wait,
                       std::size_t envelope_bytes, const py::object& tensor_follows) {
  py::array array;
  Client::Message message;
  const bool popped = self.call([&](Client& client) {
    return client.pop_message(
        key, wait, envelope_bytes,
        [&](const std::string& envelope) {
          if (tensor_follows.is_none()) return false;
          py::gil_scoped_acquire acquire;
          return tensor_follows(py::bytes(envelope)).cast<bool>();
        },
        [&](const TensorHeader& header) -> void* {
          py::gil_scoped_acquire acquire;
          std::vector<py::ssize_t> shape(header.shape.begin(), header.shape.end());
          array = py::array(py::dtype(dtype_name(header.dtype)), shape);
          return array.mutable_data();
        },
        message);
  });
  if (!popped) return py::none();
  if (message.has_tensor) return py::make_tuple(py::bytes(message.envelope), array);
  return py::make_tuple(py::bytes(message.envelope), py::bytes(message.text));
}

// Pipelined GETs into new arrays (one round trip per server).
py::list get_tensors(PyClient& self, const std::vector<std::string>& keys) {
  std::vector<py::object> arrays(keys.size());
  self.call([&](Client& client) {
    client.get_tensors(keys, [&](std::size_t i, const TensorHeader& header) -> void* {
      py::gil_scoped_acquire acquire;
      std::vector<py::ssize_t> shape(header.shape.begin(), header.shape.end());
      py::array array(py::dtype(dtype_name(header.dtype)), shape);
      arrays[i] = array;
      return array.mutable_data();
    });
  });
  py::list result;
  for (py::object& array : arrays) result.append(array);
  return result;
}

} // namespace

void bind_messages(py::class_<PyClient>& client) {
  client
      .def("pipeline", &pipeline, py::arg("commands"), py::arg("raise_on_error") = true,
           "Runs commands (sequences of str/bytes/int/buffer arguments; a list or tuple argument "
           "is sent as its pieces back to back) in one round trip per server, routed by their "
           "second argument. Returns the replies: int, bytes, None, list, or, with "
           "raise_on_error=False, a ServerError for an error reply")
      .def("get_tensors", &get_tensors, py::arg("keys"),
           "Reads tensors into new arrays with pipelined GETs (one round trip per server)")
      .def("push_message", &push_message, py::arg("key"), py::arg("envelope"), py::arg("array"),
           "RPUSH key <envelope + tensor>, the tensor sent from the array's memory; returns the "
           "length of the list")
      .def("pop_message", &pop_message, py::arg("key"), py::arg("wait"),
           py::arg("envelope_bytes") = 0, py::arg("tensor_follows") = py::none(),
           "BLPOP key, waiting at most `wait` s: None, or (envelope, ndarray) when "
           "tensor_follows(envelope) is true, else (envelope, bytes of the rest)");
}
