// The coupling's messages: progress on rank 0's stdout, warnings of every rank on stderr.
#pragma once

#include "nekrs_ml/coupling.hpp"

#include <iostream>
#include <string>

namespace nekrs_ml {

inline void coupling_log(const Collective& comm, const std::string& text) {
  if (comm.rank() == 0) std::cout << "nekrs_ml: " << text << std::endl;
}

inline void coupling_warn(const Collective& comm, const std::string& text) {
  std::cerr << "nekrs_ml: rank " << comm.rank() << ": warning: " << text << std::endl;
}

} // namespace nekrs_ml
