// Tensor wire format: "NKML", version, dtype code, rank, reserved byte, rank x uint64 LE dims,
// then the raw little-endian row-major data.
#include "nekrs_ml/codec.hpp"

#include "codec_detail.hpp"
#include "nekrs_ml/errors.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

namespace nekrs_ml {

namespace {

constexpr std::size_t kMagicOffset = 0;
constexpr std::size_t kVersionOffset = 4;
constexpr std::size_t kDTypeOffset = 5;
constexpr std::size_t kRankOffset = 6;
constexpr std::size_t kReservedOffset = 7;

constexpr DType kAllDTypes[] = {
#define NEKRS_ML_DTYPE_ITEM(name, code, size, redisai, ctype) DType::name,
    NKML_DTYPES(NEKRS_ML_DTYPE_ITEM)
#undef NEKRS_ML_DTYPE_ITEM
};

std::string key_prefix(const std::string& key) {
  return key.empty() ? std::string() : "key '" + key + "': ";
}

std::string valid_dtype_names() {
  std::string names;
  for (DType dtype : kAllDTypes) {
    if (!names.empty()) names += ", ";
    names += dtype_name(dtype);
  }
  return names;
}

// Shows bytes that should have been the magic, escaping what is not printable.
std::string printable(const std::uint8_t* data, std::size_t size) {
  static const char hex[] = "0123456789abcdef";
  std::string text;
  for (std::size_t i = 0; i < size; ++i) {
    const std::uint8_t byte = data[i];
    if (byte >= 0x20 && byte < 0x7f && byte != '\\' && byte != '\'') {
      text += static_cast<char>(byte);
    } else {
      text += "\\x";
      text += hex[byte >> 4];
      text += hex[byte & 0xf];
    }
  }
  return text;
}

void store_u64_le(std::uint64_t value, std::uint8_t* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(value >> (8 * i));
}

std::uint64_t load_u64_le(const std::uint8_t* in) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return value;
}

// Element count, or false when count * itemsize (plus a header) would not fit in size_t.
bool checked_count(const std::vector<std::uint64_t>& shape, std::size_t itemsize,
                   std::size_t& count) {
  const std::size_t limit = (std::numeric_limits<std::size_t>::max() - kMaxHeaderBytes) / itemsize;
  count = 1;
  for (std::uint64_t dim : shape) {
    if (dim == 0) {
      count = 0;
      return true;
    }
  }
  for (std::uint64_t dim : shape) {
    if (dim > limit || count > limit / dim) return false;
    count *= static_cast<std::size_t>(dim);
  }
  return true;
}

} // namespace

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
#define NEKRS_ML_DTYPE_SIZE(name, code, size, redisai, ctype) \
  case DType::name: return size;
    NKML_DTYPES(NEKRS_ML_DTYPE_SIZE)
#undef NEKRS_ML_DTYPE_SIZE
  }
  throw TensorFormatError("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
#define NEKRS_ML_DTYPE_NAME(name, code, size, redisai, ctype) \
  case DType::name: return #name;
    NKML_DTYPES(NEKRS_ML_DTYPE_NAME)
#undef NEKRS_ML_DTYPE_NAME
  }
  throw TensorFormatError("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

DType dtype_from_name(const std::string& name) {
  for (DType dtype : kAllDTypes) {
    if (name == dtype_name(dtype)) return dtype;
  }
  throw TensorFormatError("unknown dtype '" + name + "'; valid choices: " + valid_dtype_names());
}

bool dtype_valid(std::uint8_t code) {
  for (DType dtype : kAllDTypes) {
    if (code == static_cast<std::uint8_t>(dtype)) return true;
  }
  return false;
}

std::size_t TensorHeader::count() const {
  std::size_t result = 0;
  if (!checked_count(shape, dtype_size(dtype), result)) {
    throw TensorFormatError("tensor " + describe() + " is too large to address");
  }
  return result;
}

std::size_t TensorHeader::data_bytes() const { return count() * dtype_size(dtype); }

std::size_t TensorHeader::header_bytes() const { return kFixedHeaderBytes + 8 * shape.size(); }

std::string TensorHeader::describe() const {
  std::string text = dtype_valid(static_cast<std::uint8_t>(dtype))
                         ? dtype_name(dtype)
                         : "dtype" + std::to_string(static_cast<int>(dtype));
  text += '[';
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + ']';
}

std::size_t encode_header(const TensorHeader& header, std::uint8_t* out) {
  if (header.shape.size() > static_cast<std::size_t>(kMaxRank)) {
    throw TensorFormatError("tensor " + header.describe() + " has rank " +
                            std::to_string(header.shape.size()) + "; the format allows at most " +
                            std::to_string(kMaxRank));
  }
  const auto code = static_cast<std::uint8_t>(header.dtype);
  if (!dtype_valid(code)) throw TensorFormatError("unknown dtype code " + std::to_string(code));
  std::memcpy(out + kMagicOffset, kTensorMagic, sizeof kTensorMagic);
  out[kVersionOffset] = kFormatVersion;
  out[kDTypeOffset] = code;
  out[kRankOffset] = static_cast<std::uint8_t>(header.shape.size());
  out[kReservedOffset] = 0;
  for (std::size_t i = 0; i < header.shape.size(); ++i) {
    store_u64_le(header.shape[i], out + kFixedHeaderBytes + 8 * i);
  }
  return header.header_bytes();
}

std::string encode_header(const TensorHeader& header) {
  std::uint8_t bytes[kMaxHeaderBytes];
  const std::size_t size = encode_header(header, bytes);
  return std::string(reinterpret_cast<const char*>(bytes), size);
}

std::size_t header_bytes_needed(const std::uint8_t* data, std::size_t available) {
  if (available <= kRankOffset) return kFixedHeaderBytes;
  const std::size_t rank = std::min<std::size_t>(data[kRankOffset], kMaxRank);
  return kFixedHeaderBytes + 8 * rank;
}

TensorHeader decode_header(const std::uint8_t* data, std::size_t available,
                           const std::string& key) {
  const std::string where = key_prefix(key);
  const std::size_t magic_bytes = std::min(available, sizeof kTensorMagic);
  if (std::memcmp(data, kTensorMagic, magic_bytes) != 0) {
    throw TensorFormatError(where + "not a nekrs_ml tensor (bad magic '" +
                            printable(data, magic_bytes) + "', expected 'NKML')");
  }
  if (available < kFixedHeaderBytes) {
    throw TensorFormatError(where + "truncated header (" + std::to_string(available) +
                            " bytes; a tensor header has at least " +
                            std::to_string(kFixedHeaderBytes) + ")");
  }
  if (data[kVersionOffset] != kFormatVersion) {
    throw TensorFormatError(where + "unsupported format version " +
                            std::to_string(data[kVersionOffset]) + " (this library reads version " +
                            std::to_string(kFormatVersion) + ")");
  }
  if (!dtype_valid(data[kDTypeOffset])) {
    throw TensorFormatError(where + "unknown dtype code " + std::to_string(data[kDTypeOffset]) +
                            " (valid codes 1-" + std::to_string(NKML_DTYPE_COUNT) + ": " +
                            valid_dtype_names() + ")");
  }
  const std::size_t rank = data[kRankOffset];
  if (rank > static_cast<std::size_t>(kMaxRank)) {
    throw TensorFormatError(where + "rank " + std::to_string(rank) + " > " +
                            std::to_string(kMaxRank) + " (the format allows at most " +
                            std::to_string(kMaxRank) + " dimensions)");
  }
  if (data[kReservedOffset] != 0) {
    throw TensorFormatError(where + "reserved header byte is " +
                            std::to_string(data[kReservedOffset]) + ", expected 0");
  }
  TensorHeader header;
  header.dtype = static_cast<DType>(data[kDTypeOffset]);
  if (available < header_bytes_needed(data, available)) {
    throw TensorFormatError(where + "truncated header (" + std::to_string(available) +
                            " bytes; a rank-" + std::to_string(rank) + " header has " +
                            std::to_string(kFixedHeaderBytes + 8 * rank) + ")");
  }
  for (std::size_t i = 0; i < rank; ++i) {
    header.shape.push_back(load_u64_le(data + kFixedHeaderBytes + 8 * i));
  }
  std::size_t count = 0;
  if (!checked_count(header.shape, dtype_size(header.dtype), count)) {
    throw TensorFormatError(where + "header " + header.describe() +
                            " describes more bytes than can be addressed (corrupt header)");
  }
  return header;
}

void check_value_bytes(const TensorHeader& header, std::size_t value_bytes,
                       const std::string& key) {
  const std::size_t needed = header.header_bytes() + header.data_bytes();
  if (value_bytes != needed) {
    throw TensorFormatError(key_prefix(key) + "value has " + std::to_string(value_bytes) +
                            " bytes but header " + header.describe() + " needs " +
                            std::to_string(needed) + " (truncated or trailing bytes)");
  }
}

TensorHeader decode_value(const std::uint8_t* data, std::size_t value_bytes,
                          const std::string& key) {
  TensorHeader header = decode_header(data, value_bytes, key);
  check_value_bytes(header, value_bytes, key);
  return header;
}

std::string encode_tensor(const TensorHeader& header, const void* data) {
  std::string bytes = encode_header(header);
  bytes.append(static_cast<const char*>(data), header.data_bytes());
  return bytes;
}

} // namespace nekrs_ml
