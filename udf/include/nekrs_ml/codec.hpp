// Tensor wire format (docs/protocol.md): one tensor = one Redis value =
//   header (8 + 8*ndim bytes) + raw little-endian row-major data.
// This file is the only place the format lives in C++.
#pragma once

#include "nekrs_ml/protocol.h"

#include <cstddef>
#include <cstdint>
#include <stdint.h>
#include <string>
#include <vector>

namespace nekrs_ml {

// The dtype codes, item sizes and header constants come from nekrs_ml/protocol.tsv (through the
// generated nekrs_ml/protocol.h), the one table that the C API, the Redis module, the Fortran
// module and the Python package share.
enum class DType : std::uint8_t {
#define NEKRS_ML_DTYPE_ENUMERATOR(name, code, size, redisai, ctype) name = code,
  NKML_DTYPES(NEKRS_ML_DTYPE_ENUMERATOR)
#undef NEKRS_ML_DTYPE_ENUMERATOR
};

constexpr char kTensorMagic[4] = {NKML_TENSOR_MAGIC[0], NKML_TENSOR_MAGIC[1],
                                  NKML_TENSOR_MAGIC[2], NKML_TENSOR_MAGIC[3]};
constexpr std::uint8_t kFormatVersion = NKML_TENSOR_FORMAT_VERSION;
constexpr int kMaxRank = NKML_TENSOR_MAX_RANK;
constexpr std::size_t kFixedHeaderBytes = NKML_TENSOR_FIXED_HEADER_BYTES;
constexpr std::size_t kMaxHeaderBytes = kFixedHeaderBytes + 8 * kMaxRank;

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
// Parses "float32", "int64", ...; throws TensorFormatError naming the valid choices.
DType dtype_from_name(const std::string& name);
bool dtype_valid(std::uint8_t code);

// The element type of each dtype (the table's C type column; its size must be the item size).
template <typename T> constexpr DType dtype_of();
#define NEKRS_ML_DTYPE_OF(name, code, size, redisai, ctype)                                       \
  template <> constexpr DType dtype_of<ctype>() { return DType::name; }                           \
  static_assert(sizeof(ctype) == size, "item size of " #name " in nekrs_ml/protocol.tsv");
NKML_DTYPES(NEKRS_ML_DTYPE_OF)
#undef NEKRS_ML_DTYPE_OF

struct TensorHeader {
  DType dtype = DType::float32;
  std::vector<std::uint64_t> shape;

  std::size_t count() const;        // number of elements (1 for a 0-d tensor)
  std::size_t data_bytes() const;   // count() * dtype_size(dtype)
  std::size_t header_bytes() const; // 8 + 8 * shape.size()
  std::string describe() const;     // e.g. "float32[25000, 3]"
};

// Writes the header into `out` (at least header.header_bytes() bytes); returns bytes written.
// Throws TensorFormatError if the rank exceeds kMaxRank.
std::size_t encode_header(const TensorHeader& header, std::uint8_t* out);
std::string encode_header(const TensorHeader& header);

// Parses a header from the first `available` bytes of a value. `key` is only used in messages.
// Throws TensorFormatError on wrong magic, version, dtype or rank, or when fewer than the
// header's bytes are available.
TensorHeader decode_header(const std::uint8_t* data, std::size_t available,
                           const std::string& key = "");

// Checks that a whole value of `value_bytes` bytes is one complete tensor; returns its header.
TensorHeader decode_value(const std::uint8_t* data, std::size_t value_bytes,
                          const std::string& key = "");

// Full encoding into a new string (header + data). For small values and tests.
std::string encode_tensor(const TensorHeader& header, const void* data);

} // namespace nekrs_ml
