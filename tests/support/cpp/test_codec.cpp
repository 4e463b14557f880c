// The C++ codec: header layout, round trips and refusal of bad values (no server needed).
#include "check.hpp"
#include "nekrs_ml/client.hpp"
#include "nekrs_ml/codec.hpp"

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

using namespace nekrs_ml;

namespace {

const std::uint8_t* bytes_of(const std::string& value) {
  return reinterpret_cast<const std::uint8_t*>(value.data());
}

std::uint64_t u64_at(const std::string& value, std::size_t offset) {
  std::uint64_t result = 0;
  for (int i = 7; i >= 0; --i)
    result = (result << 8) | static_cast<std::uint8_t>(value[offset + i]);
  return result;
}

void header_layout() {
  const std::vector<float> data = {0, 1, 2, 3, 4, 5};
  const std::string value = encode_tensor(TensorHeader{DType::float32, {2, 3}}, data.data());
  CHECK(value.size() == 24 + 6 * sizeof(float));
  CHECK(value.compare(0, 4, "NKML") == 0);
  CHECK(value[4] == 1 && value[5] == 1 && value[6] == 2 && value[7] == 0);
  CHECK(u64_at(value, 8) == 2 && u64_at(value, 16) == 3);
  CHECK(std::memcmp(value.data() + 24, data.data(), 6 * sizeof(float)) == 0);
}

void round_trips() {
  const std::int16_t scalar = -7;
  for (const std::vector<std::uint64_t>& shape :
       {std::vector<std::uint64_t>{}, {7}, {2, 3, 4, 5}, {0, 3}}) {
    TensorHeader header{DType::int16, shape};
    std::vector<std::int16_t> data(std::max<std::size_t>(header.count(), 1), scalar);
    const std::string value = encode_tensor(header, data.data());
    const TensorHeader decoded = decode_value(bytes_of(value), value.size(), "k");
    CHECK(decoded.dtype == DType::int16 && decoded.shape == shape);
    CHECK(decoded.header_bytes() + decoded.data_bytes() == value.size());
  }
  CHECK(TensorHeader{DType::float64, {}}.count() == 1);
  CHECK(TensorHeader{DType::float32, {25000, 3}}.describe() == "float32[25000, 3]");
  CHECK(dtype_from_name("uint16") == DType::uint16 && dtype_size(DType::int64) == 8);
  CHECK_THROWS(TensorFormatError, "valid choices", dtype_from_name("complex64"));
}

void bad_values() {
  const std::vector<double> data = {1, 2, 3, 4};
  const std::string good = encode_tensor(TensorHeader{DType::float64, {4}}, data.data());
  auto decode = [](const std::string& value) { decode_value(bytes_of(value), value.size(), "k1"); };
  std::string value = good;
  value[0] = 'X';
  CHECK_THROWS(TensorFormatError, "key 'k1': not a nekrs_ml tensor (bad magic", decode(value));
  CHECK_THROWS(TensorFormatError, "not a nekrs_ml tensor", decode("hello"));
  value = good;
  value[4] = 9;
  CHECK_THROWS(TensorFormatError, "unsupported format version 9", decode(value));
  value = good;
  value[5] = 42;
  CHECK_THROWS(TensorFormatError, "unknown dtype code 42", decode(value));
  value = good;
  value[6] = 9;
  CHECK_THROWS(TensorFormatError, "rank 9", decode(value));
  value = good;
  value[7] = 1;
  CHECK_THROWS(TensorFormatError, "reserved", decode(value));
  CHECK_THROWS(TensorFormatError, "truncated header", decode(good.substr(0, 12)));
  CHECK_THROWS(TensorFormatError, "value has 45 bytes but header float64[4] needs 48",
               decode(good.substr(0, 45)));
  CHECK_THROWS(TensorFormatError, "trailing", decode(good + '\0'));
  value = good;
  for (int i = 0; i < 8; ++i) value[8 + i] = static_cast<char>(0xff);
  CHECK_THROWS(TensorFormatError, "k1", decode(value));
  CHECK_THROWS(TensorFormatError, "rank 9",
               encode_header(TensorHeader{DType::int8, std::vector<std::uint64_t>(9, 1)}));
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max() / 2;
  CHECK_THROWS(TensorFormatError, "too large",
               (TensorHeader{DType::float64, {huge, 4}}.data_bytes()));
}

void slots() {
  CHECK(key_slot("123456789") == 12739);
  CHECK(key_slot("foo") == 12182);
  CHECK(key_slot("{user1000}.following") == key_slot("user1000"));
  CHECK(key_slot("nkml:{r3}:train:0:x") == key_slot("nkml:{r3}:train:index"));
  // Cases from the Redis Cluster specification: the first "{...}" counts, an empty one does not.
  CHECK(key_slot("foo{bar}{zap}") == key_slot("bar"));
  CHECK(key_slot("foo{{bar}}zap") == key_slot("{bar"));
  CHECK(key_slot("foo{}{bar}") == 8363); // the whole key is hashed
}

} // namespace

int main() {
  header_layout();
  round_trips();
  bad_values();
  slots();
  return check_report("test_codec");
}
