// Test stand-in for NekRS 25.x deviceMemory<T>: a typed view of an occa::memory. resize() only
// grows, and growing reallocates (the old contents are gone), as in NekRS.
#pragma once

#include "nekrsSys.hpp"
#include "device.hpp"

#include <cstddef>
#include <stdexcept>
#include <vector>

template <typename T = std::byte> class deviceMemory {
  using size_type = std::size_t;

public:
  deviceMemory() = default;
  explicit deviceMemory(size_type count)
      : memory_{occa::memory::allocate(count, occa::dtype::get<T>())} {}
  explicit deviceMemory(const std::vector<T>& values) : deviceMemory{values.size()} {
    copyFrom(values);
  }
  explicit deviceMemory(const occa::memory& memory) : memory_{memory} {
    if (memory_.byte_size() && memory_.dtype() != occa::dtype::get<T>()) {
      throw std::runtime_error("deviceMemory: data type does not match");
    }
  }

  operator const occa::memory&() const { return memory_; }
  operator occa::memory&() { return memory_; }

  size_type byte_size() const { return memory_.byte_size(); }
  size_type size() const { return memory_.size(); }
  size_type length() const { return memory_.length(); }
  bool isInitialized() const { return memory_.isInitialized(); }
  void clear() { memory_.free(); }

  void resize(size_type count) {
    if (count > size()) {
      clear();
      memory_ = occa::memory::allocate(count, occa::dtype::get<T>());
    }
  }

  T* ptr() { return memory_.template ptr<T>(); }
  const T* ptr() const { return memory_.template ptr<T>(); }

  deviceMemory slice(size_type offset, size_type count = 0) const {
    return deviceMemory{count ? memory_.slice(offset, count) : memory_.slice(offset)};
  }

  void copyFrom(const void* src, size_type count, size_type dest_offset = 0) {
    memory_.copyFrom(src, count, dest_offset);
  }
  void copyFrom(const std::vector<T>& src, size_type count, size_type dest_offset = 0,
                size_type src_offset = 0) {
    check_host("copyFrom", src.size(), src_offset, count);
    memory_.copyFrom(src.data() + src_offset, count, dest_offset);
  }
  void copyFrom(const std::vector<T>& src) { copyFrom(src, memory_.size(), 0, 0); }
  void copyFrom(const occa::memory& src, size_type count, size_type dest_offset = 0,
                size_type src_offset = 0) {
    memory_.copyFrom(src, count, dest_offset, src_offset);
  }

  void copyTo(std::vector<T>& dest, size_type count, size_type src_offset = 0,
              size_type dest_offset = 0) const {
    check_host("copyTo", dest.size(), dest_offset, count);
    memory_.copyTo(dest.data() + dest_offset, count, src_offset);
  }
  void copyTo(std::vector<T>& dest) const { copyTo(dest, memory_.size(), 0, 0); }
  void copyTo(void* dest, size_type count, size_type src_offset = 0) const {
    memory_.copyTo(dest, count, src_offset);
  }

private:
  // NekRS does not check the host side (a short vector is a buffer overrun there); the
  // stand-in does, so that such a bug fails the test instead of corrupting memory.
  static void check_host(const char* what, size_type host_size, size_type offset, size_type count) {
    if (offset + count > host_size) {
      throw std::runtime_error(std::string("deviceMemory::") + what + ": host vector of " +
                               std::to_string(host_size) + " elements, access [" +
                               std::to_string(offset) + ", " +
                               std::to_string(offset + count) + ")");
    }
  }

  occa::memory memory_;
};
