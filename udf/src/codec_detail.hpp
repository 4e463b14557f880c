// Codec helpers for reading a tensor in pieces (the client receives the header before the data).
#pragma once

#include "nekrs_ml/codec.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace nekrs_ml {

// How many header bytes the value needs, judged from its first `available` bytes: the fixed
// part until the rank byte has arrived, then the whole header (rank clamped to kMaxRank).
std::size_t header_bytes_needed(const std::uint8_t* data, std::size_t available);

// Throws TensorFormatError unless a value of `value_bytes` bytes is exactly header + data.
void check_value_bytes(const TensorHeader& header, std::size_t value_bytes, const std::string& key);

} // namespace nekrs_ml
