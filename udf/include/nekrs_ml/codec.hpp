// Tensor wire format (docs/protocol.md): one tensor = one Redis value =
//   header (8 + 8*ndim bytes) + raw little-endian row-major data.
// This file is the only place the format lives in C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nekrs_ml {

enum class DType : std::uint8_t {
  float32 = 1,
  float64 = 2,
  int8 = 3,
  int16 = 4,
  int32 = 5,
  int64 = 6,
  uint8 = 7,
  uint16 = 8,
};

constexpr char kTensorMagic[4] = {'N', 'K', 'M', 'L'};
constexpr std::uint8_t kFormatVersion = 1;
constexpr int kMaxRank = 8;
constexpr std::size_t kFixedHeaderBytes = 8;
constexpr std::size_t kMaxHeaderBytes = kFixedHeaderBytes + 8 * kMaxRank;

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
// Parses "float32", "int64", ...; throws TensorFormatError naming the valid choices.
DType dtype_from_name(const std::string& name);
bool dtype_valid(std::uint8_t code);

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::float32; }
template <> constexpr DType dtype_of<double>() { return DType::float64; }
template <> constexpr DType dtype_of<std::int8_t>() { return DType::int8; }
template <> constexpr DType dtype_of<std::int16_t>() { return DType::int16; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::int32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::int64; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::uint8; }
template <> constexpr DType dtype_of<std::uint16_t>() { return DType::uint16; }

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
