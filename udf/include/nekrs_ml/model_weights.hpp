// The weights of one model version in the wire format of docs/protocol.md ("Model weights"):
// the in-process backend swaps them into a compiled package of the same graph.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nekrs_ml {

struct ModelWeights {
  struct Tensor {
    std::string name;                 // fully qualified parameter or buffer name
    std::vector<std::int64_t> shape;  // float32, C order
    std::size_t offset = 0;           // into data
    std::size_t bytes = 0;
  };
  std::string graph; // id of the graph these weights belong to
  int n_in = 0, n_out = 0;
  std::vector<Tensor> tensors;
  std::string data; // the raw little-endian float32 values of every tensor, in order

  const float* values(const Tensor& tensor) const {
    return reinterpret_cast<const float*>(data.data() + tensor.offset);
  }
};

// Parses a weights blob; throws TensorFormatError naming what is malformed.
ModelWeights parse_model_weights(std::string blob);

} // namespace nekrs_ml
