// numpy arrays used in place by the binding files: their description in messages and the shape
// of a C-contiguous array (workflow.cpp, inference.cpp).
#pragma once

#include "nekrs_ml/errors.hpp"

#include <pybind11/numpy.h>

#include <cstdint>
#include <string>
#include <vector>

namespace nekrs_ml::python {

namespace py = pybind11;

// e.g. "float32[25000, 3]"
inline std::string describe(const py::array& array) {
  std::string shape;
  for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) {
    shape += (axis ? ", " : "") + std::to_string(array.shape(axis));
  }
  return std::string(py::str(array.dtype())) + "[" + shape + "]";
}

// The shape of an array that is used without a copy; ConfigError naming `what` otherwise.
inline std::vector<std::uint64_t> contiguous_shape(const py::array& array, const char* what) {
  if (!(array.flags() & py::array::c_style)) {
    throw ConfigError(std::string(what) + " " + describe(array) +
                      " is not C-contiguous; pass numpy.ascontiguousarray(a)");
  }
  return std::vector<std::uint64_t>(array.shape(), array.shape() + array.ndim());
}

} // namespace nekrs_ml::python
