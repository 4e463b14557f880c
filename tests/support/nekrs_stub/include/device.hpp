// Test stand-in for NekRS 25.x device_t (platform->device): allocations are host memory.
#pragma once

#include "occa.hpp"

#include <cstddef>

class device_t {
public:
  // `entries` elements of T (bytes for T = void), uninitialised (NaN bytes).
  template <class T = void> occa::memory malloc(size_t entries) {
    return occa::memory::allocate(entries, occa::dtype::get<T>());
  }
  template <class T = void> occa::memory malloc(size_t entries, const void* src) {
    occa::memory m = malloc<T>(entries);
    if (src) m.copyFrom(src, static_cast<occa::dim_t>(entries));
    return m;
  }
  template <class T = void> occa::memory mallocHost(size_t entries) { return malloc<T>(entries); }
};
