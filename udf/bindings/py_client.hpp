// The Python-facing client: a nekrs_ml::Client behind a mutex, used with the GIL released.
// Shared by the binding files (core.cpp binds it; workflow.cpp passes it to the stream).
#pragma once

#include "nekrs_ml/client.hpp"

#include <pybind11/pybind11.h>

#include <memory>
#include <mutex>

namespace nekrs_ml::python {

namespace py = pybind11;

class PyClient {
public:
  explicit PyClient(const ClientOptions& options) : options_(options) {
    py::gil_scoped_release release;
    client_ = std::make_unique<Client>(options);
  }

  // Runs fn(client) with the GIL released. fn must not touch Python objects without
  // re-acquiring the GIL.
  template <typename Fn> auto call(Fn&& fn) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!client_) throw ConnectionError("the client is closed");
    return fn(*client_);
  }

  void close() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    client_.reset();
  }

  void set_timeout(double timeout_s) {
    call([&](Client& client) { client.set_timeout(timeout_s); });
    options_.timeout_s = timeout_s;
  }

  const ClientOptions& options() const { return options_; }
  bool closed() const { return !client_; }

private:
  ClientOptions options_; // kept for repr() after close()
  std::mutex mutex_;
  std::unique_ptr<Client> client_;
};

} // namespace nekrs_ml::python
