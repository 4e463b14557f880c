// numpy arrays used in place by the binding files: their description in messages, their wire
// dtype and the shape of a C-contiguous array.
#pragma once

#include "nekrs_ml/codec.hpp"
#include "nekrs_ml/errors.hpp"

#include <pybind11/numpy.h>

#include <cstdint>
#include <optional>
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

// The wire dtype of an array, read from its descriptor's kind and item size; nothing for any
// other dtype or a big-endian array. (numpy computes dtype.name and str(dtype) in Python code,
// 10-25 us a call: the callers name the dtype only in their error messages.)
inline std::optional<DType> wire_dtype(const py::array& array) {
  const py::dtype dtype = array.dtype();
  if (dtype.byteorder() == '>') return std::nullopt;
  const py::ssize_t size = dtype.itemsize();
  switch (dtype.kind()) {
  case 'f':
    if (size == 4) return DType::float32;
    if (size == 8) return DType::float64;
    break;
  case 'i':
    if (size == 1) return DType::int8;
    if (size == 2) return DType::int16;
    if (size == 4) return DType::int32;
    if (size == 8) return DType::int64;
    break;
  case 'u':
    if (size == 1) return DType::uint8;
    if (size == 2) return DType::uint16;
    break;
  default:
    break;
  }
  return std::nullopt;
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
