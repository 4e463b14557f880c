#include "nekrs_ml/model_weights.hpp"

#include "nekrs_ml/errors.hpp"

#include <sstream>

namespace nekrs_ml {

namespace {

constexpr const char* kMagic = "NKMLW1\n";
constexpr const char* kDataLine = "\ndata\n";

std::vector<std::int64_t> parse_shape(const std::string& text) {
  std::vector<std::int64_t> shape;
  if (text == "-") return shape; // a 0-d tensor
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::size_t used = 0;
    const long long dim = std::stoll(item, &used);
    if (used != item.size() || dim < 0) throw TensorFormatError("model weights: bad shape " + text);
    shape.push_back(dim);
  }
  return shape;
}

} // namespace

ModelWeights parse_model_weights(std::string blob) {
  const std::string magic = kMagic;
  if (blob.compare(0, magic.size(), magic) != 0) {
    throw TensorFormatError("model weights: not in the nekrs_ml weights format (no NKMLW1 header)");
  }
  const std::size_t end = blob.find(kDataLine);
  if (end == std::string::npos) throw TensorFormatError("model weights: header without a data line");
  ModelWeights weights;
  std::stringstream header(blob.substr(magic.size(), end - magic.size()));
  std::string line;
  std::size_t offset = 0;
  bool have_n_in = false, have_n_out = false;
  while (std::getline(header, line)) {
    std::stringstream fields(line);
    std::string kind;
    fields >> kind;
    try {
      if (kind == "graph") {
        fields >> weights.graph;
      } else if (kind == "n_in") {
        fields >> weights.n_in;
        have_n_in = !fields.fail();
      } else if (kind == "n_out") {
        fields >> weights.n_out;
        have_n_out = !fields.fail();
      } else if (kind == "tensor") {
        ModelWeights::Tensor tensor;
        std::string dtype, shape;
        fields >> tensor.name >> dtype >> shape >> tensor.bytes;
        if (fields.fail() || dtype != "float32") throw TensorFormatError("");
        tensor.shape = parse_shape(shape);
        std::size_t count = 1;
        for (const auto dim : tensor.shape) count *= static_cast<std::size_t>(dim);
        if (count * sizeof(float) != tensor.bytes) throw TensorFormatError("");
        tensor.offset = offset;
        offset += tensor.bytes;
        weights.tensors.push_back(std::move(tensor));
      } else {
        throw TensorFormatError("");
      }
    } catch (const std::exception&) {
      throw TensorFormatError("model weights: unexpected header line '" + line + "'");
    }
  }
  if (weights.graph.empty() || !have_n_in || !have_n_out) {
    throw TensorFormatError("model weights: the header lacks graph, n_in or n_out");
  }
  const std::size_t data_start = end + std::string(kDataLine).size();
  if (blob.size() - data_start != offset) {
    throw TensorFormatError("model weights: " + std::to_string(blob.size() - data_start) +
                            " data bytes for tensors of " + std::to_string(offset) + " bytes");
  }
  weights.data = blob.substr(data_start);
  return weights;
}

} // namespace nekrs_ml
