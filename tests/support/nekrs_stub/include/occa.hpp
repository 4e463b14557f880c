// Test stand-in for the part of OCCA that the nekrs_ml adapter touches through NekRS 25.x:
// occa::memory (a typed buffer handle; here host memory), occa::dtype, and occa::json /
// occa::properties (only what deviceKernelProperties needs).
//
// Semantics kept from OCCA as NekRS ships it: counts and offsets of copyFrom/copyTo/slice are in
// elements of the memory's dtype; a copy outside the allocation is an error (OCCA_ERROR throws);
// copies of a memory object share the allocation; a copy into an uninitialised memory does
// nothing. New allocations are filled with NaN bytes (device memory is not zeroed), so that a
// read of never-written memory shows up in the results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace occa {

using dim_t = long long;
using udim_t = unsigned long long;

class dtype_t {
public:
  dtype_t() = default;
  dtype_t(const char* name, std::size_t bytes) : name_(name), bytes_(bytes) {}
  const std::string& name() const { return name_; }
  std::size_t bytes() const { return bytes_; }
  bool operator==(const dtype_t& other) const { return name_ == other.name_; }
  bool operator!=(const dtype_t& other) const { return !(*this == other); }

private:
  std::string name_ = "byte";
  std::size_t bytes_ = 1;
};

namespace dtype {
template <typename T> inline dtype_t get();
template <> inline dtype_t get<void>() { return {"byte", 1}; }
template <> inline dtype_t get<std::byte>() { return {"byte", 1}; }
template <> inline dtype_t get<char>() { return {"char", 1}; }
template <> inline dtype_t get<float>() { return {"float", sizeof(float)}; }
template <> inline dtype_t get<double>() { return {"double", sizeof(double)}; }
template <> inline dtype_t get<int>() { return {"int", sizeof(int)}; }
template <> inline dtype_t get<long long>() { return {"long long", sizeof(long long)}; }
} // namespace dtype

class error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class memory {
public:
  memory() = default;

  // An allocation of `count` elements of `type`, filled with 0xff bytes (NaN for floating point).
  static memory allocate(std::size_t count, const dtype_t& type) {
    memory m;
    m.storage_ = std::make_shared<std::vector<unsigned char>>(count * type.bytes(), 0xff);
    m.type_ = type;
    m.offset_ = 0;
    m.count_ = count;
    return m;
  }

  bool isInitialized() const { return storage_ != nullptr; }
  udim_t size() const { return count_; }
  udim_t length() const { return count_; }
  udim_t byte_size() const { return count_ * type_.bytes(); }
  const dtype_t& dtype() const { return type_; }

  void* ptr() { return storage_ ? storage_->data() + offset_ : nullptr; }
  const void* ptr() const { return storage_ ? storage_->data() + offset_ : nullptr; }
  template <typename T> T* ptr() { return static_cast<T*>(ptr()); }
  template <typename T> const T* ptr() const { return static_cast<const T*>(ptr()); }

  void free() { *this = memory(); }

  memory slice(dim_t offset, dim_t count = -1) const {
    check_range("slice", offset, count < 0 ? static_cast<dim_t>(count_) - offset : count);
    memory m = *this;
    m.offset_ = offset_ + static_cast<std::size_t>(offset) * type_.bytes();
    m.count_ = count < 0 ? count_ - static_cast<std::size_t>(offset)
                         : static_cast<std::size_t>(count);
    return m;
  }

  void copyFrom(const void* src, dim_t count = -1, dim_t offset = 0) {
    if (!isInitialized()) return;
    const dim_t n = count < 0 ? static_cast<dim_t>(count_) : count;
    check_range("copyFrom", offset, n);
    std::memcpy(bytes_at(offset), src, static_cast<std::size_t>(n) * type_.bytes());
  }

  void copyTo(void* dest, dim_t count = -1, dim_t offset = 0) const {
    if (!isInitialized()) return;
    const dim_t n = count < 0 ? static_cast<dim_t>(count_) : count;
    check_range("copyTo", offset, n);
    std::memcpy(dest, bytes_at(offset), static_cast<std::size_t>(n) * type_.bytes());
  }

  void copyFrom(const memory& src, dim_t count = -1, dim_t dest_offset = 0, dim_t src_offset = 0) {
    if (!isInitialized() || !src.isInitialized()) return;
    const dim_t n = count < 0 ? static_cast<dim_t>(count_) : count;
    check_range("copyFrom", dest_offset, n);
    src.check_range("copyFrom (source)", src_offset, n);
    std::memmove(bytes_at(dest_offset), src.bytes_at(src_offset),
                 static_cast<std::size_t>(n) * type_.bytes());
  }

  void copyTo(memory& dest, dim_t count = -1, dim_t dest_offset = 0, dim_t src_offset = 0) const {
    dest.copyFrom(*this, count, dest_offset, src_offset);
  }

private:
  void check_range(const char* what, dim_t offset, dim_t count) const {
    if (offset < 0 || count < 0 || static_cast<udim_t>(offset + count) > count_) {
      throw error(std::string("occa::memory::") + what + ": elements [" + std::to_string(offset) +
                  ", " + std::to_string(offset + count) + ") of a memory of " +
                  std::to_string(count_) + " " + type_.name() + " elements");
    }
  }
  unsigned char* bytes_at(dim_t offset) const {
    return storage_->data() + offset_ + static_cast<std::size_t>(offset) * type_.bytes();
  }

  std::shared_ptr<std::vector<unsigned char>> storage_;
  dtype_t type_;
  std::size_t offset_ = 0; // bytes into storage_
  std::size_t count_ = 0;  // elements
};

// occa::json: a value, an array or an object (only what deviceKernelProperties uses).
class json {
public:
  json() = default;

  json& operator[](const std::string& key) {
    kind_ = Kind::object;
    for (auto& member : members_) {
      if (member.first == key) return member.second;
    }
    members_.emplace_back(key, json());
    return members_.back().second;
  }
  bool has(const std::string& key) const {
    for (const auto& member : members_) {
      if (member.first == key) return true;
    }
    return false;
  }
  const json& at(const std::string& key) const {
    for (const auto& member : members_) {
      if (member.first == key) return member.second;
    }
    throw error("occa::json: no member '" + key + "'");
  }

  json& asArray() {
    if (kind_ != Kind::array) {
      kind_ = Kind::array;
      items_.clear();
    }
    return *this;
  }
  json& operator+=(const json& item) {
    asArray();
    items_.push_back(item);
    return *this;
  }
  const std::vector<json>& items() const { return items_; }

  json(const char* text) : kind_(Kind::string), value_(text) {}
  json(const std::string& text) : kind_(Kind::string), value_(text) {}
  json(int number) : kind_(Kind::number), value_(std::to_string(number)) {}
  json(long number) : kind_(Kind::number), value_(std::to_string(number)) {}
  json(long long number) : kind_(Kind::number), value_(std::to_string(number)) {}
  json(double number) : kind_(Kind::number), value_(std::to_string(number)) {}
  json(bool flag) : kind_(Kind::boolean), value_(flag ? "true" : "false") {}

  bool isString() const { return kind_ == Kind::string; }
  bool isNumber() const { return kind_ == Kind::number; }
  // The value as text (numbers as written by std::to_string).
  const std::string& text() const { return value_; }

private:
  enum class Kind { null, string, number, boolean, array, object };
  Kind kind_ = Kind::null;
  std::string value_;
  std::vector<json> items_;
  std::vector<std::pair<std::string, json>> members_;
};

using properties = json;

} // namespace occa
