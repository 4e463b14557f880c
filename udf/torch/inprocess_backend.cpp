// libnekrsml_torch: the in-process inference backend (nekrs_ml/inprocess.hpp) on libtorch's
// AOTInductor package loader. The only translation unit of nekrs_ml that includes torch.
#include "nekrs_ml/client.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inprocess.hpp"
#include "nekrs_ml/keys.hpp"
#include "nekrs_ml/model_weights.hpp"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <unordered_map>
#include <vector>

namespace nekrs_ml {

namespace {

using Clock = std::chrono::steady_clock;
using Loader = torch::inductor::AOTIModelPackageLoader;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string torch_release() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

at::Device parse_device(const std::string& text) {
  if (text == "cpu") return at::Device(at::kCPU);
  if (text.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA()) {
      throw ConfigError("inprocessDevice = " + text + ": this libtorch has no CUDA device (a CPU "
                        "build of torch?); use cpu");
    }
    try {
      return at::Device(text);
    } catch (const c10::Error&) {
    }
  }
  throw ConfigError("inprocessDevice = " + text + ": use cpu, cuda or cuda:N");
}

// The loader reads a package from a file: one in a private directory, removed once loaded.
class ScratchPackage {
public:
  explicit ScratchPackage(const std::string& bytes) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/nekrs_ml-package-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (!mkdtemp(buffer.data())) {
      throw ConfigError("in-process inference: cannot create a directory like " + pattern + " (" +
                        std::strerror(errno) + "); set TMPDIR to a writable directory");
    }
    directory_ = buffer.data();
    path_ = directory_ + "/model.pt2";
    std::ofstream out(path_, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::remove(path_.c_str());
      rmdir(directory_.c_str());
      throw ConfigError("in-process inference: cannot write " + path_ + " (disk full?)");
    }
  }
  ~ScratchPackage() {
    std::remove(path_.c_str());
    rmdir(directory_.c_str());
  }
  ScratchPackage(const ScratchPackage&) = delete;
  ScratchPackage& operator=(const ScratchPackage&) = delete;
  const std::string& path() const { return path_; }

private:
  std::string directory_, path_;
};

// The message of a torch error without its C++ backtrace (torch's own exceptions carry one).
std::string reason(const std::exception& error) {
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&error)) {
    return torch_error->what_without_backtrace();
  }
  return error.what();
}

std::string lookup(const std::unordered_map<std::string, std::string>& metadata,
                   const std::string& key) {
  const auto found = metadata.find(key);
  return found == metadata.end() ? std::string("(none)") : found->second;
}

struct LoadedModel {
  std::unique_ptr<Loader> loader;
  std::unordered_map<std::string, at::Tensor> constants; // the weights in use
  std::string graph;
  std::int64_t n_in = 0, n_out = 0;
  std::uint64_t version = 0;
  Clock::time_point checked{};
  // A version that can never be used here (wrong package, no weights) and why.
  std::uint64_t refused = 0;
  std::string refusal;
  std::uint64_t warned = 0; // last version a "not used" warning was printed for
};

class TorchInprocessBackend final : public InprocessBackend {
public:
  TorchInprocessBackend(Client& client, const InprocessOptions& options)
      : client_(client), options_(options), device_(parse_device(options.device)) {
    // One intra-op thread per rank by default: a solver runs a rank per core, and torch's
    // default pool (a thread per core in every rank) oversubscribes the node.
    at::set_num_threads(options_.threads);
  }

  InferenceResult run(const std::string& model, const TensorHeader& inputs_header,
                      const void* inputs, void* outputs, std::size_t capacity_bytes) override {
    return evaluate(model, inputs_header, inputs, outputs, capacity_bytes, false, nullptr);
  }

  InferenceResult run_on_device(const std::string& model, const TensorHeader& inputs_header,
                                const void* inputs, void* outputs, std::size_t capacity_bytes,
                                void* stream) override {
    return evaluate(model, inputs_header, inputs, outputs, capacity_bytes, true, stream);
  }

  std::uint64_t refresh(const std::string& model) override {
    LoadedModel& loaded = models_[model];
    update(model, loaded);
    return loaded.version;
  }

  double last_swap_seconds() const override { return last_swap_s_; }
  std::string torch_version() const override { return torch_release(); }

private:
  std::string device_kind() const { return device_.is_cuda() ? "cuda" : "cpu"; }

  InferenceResult evaluate(const std::string& model, const TensorHeader& header,
                           const void* inputs, void* outputs, std::size_t capacity_bytes,
                           bool on_device, void* stream) {
    const auto start = Clock::now();
    LoadedModel& loaded = models_[model];
    if (!loaded.loader || seconds_since(loaded.checked) >= options_.reload_interval_s) {
      update(model, loaded);
    }
    if (header.dtype != DType::float32 || header.shape.size() != 2 ||
        static_cast<std::int64_t>(header.shape[1]) != loaded.n_in) {
      throw TensorFormatError(model + " v" + std::to_string(loaded.version) + " takes float32[n, " +
                              std::to_string(loaded.n_in) + "], got " + header.describe());
    }
    const auto rows = static_cast<std::int64_t>(header.shape[0]);
    const std::size_t needed = static_cast<std::size_t>(rows * loaded.n_out) * sizeof(float);
    if (capacity_bytes < needed) {
      throw TensorFormatError(model + ": the output buffer holds " + std::to_string(capacity_bytes) +
                              " bytes, the predictions need " + std::to_string(needed));
    }
    c10::InferenceMode guard;
    const auto floats = at::TensorOptions().dtype(at::kFloat);
    const auto where = on_device ? floats.device(device_) : floats;
    std::vector<at::Tensor> answer;
    try { // torch's errors (a failing kernel, device memory) become the coupling's model errors
      at::Tensor x = at::from_blob(const_cast<void*>(inputs), {rows, loaded.n_in}, where);
      if (!on_device && device_.is_cuda()) x = x.to(device_);
      answer = loaded.loader->run({x}, stream);
      if (answer.size() != 1 || answer[0].dim() != 2 || answer[0].size(0) != rows ||
          answer[0].size(1) != loaded.n_out || answer[0].scalar_type() != at::kFloat) {
        throw TensorFormatError(model + " v" + std::to_string(loaded.version) +
                                " answered something other than float32[n, n_out]");
      }
      at::Tensor target = at::from_blob(outputs, {rows, loaded.n_out}, where);
      target.copy_(answer[0]);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& error) {
      throw ModelError(model + " v" + std::to_string(loaded.version) + " failed: " +
                       reason(error));
    }
    InferenceResult result;
    result.header = TensorHeader{DType::float32,
                                 {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(loaded.n_out)}};
    result.version = loaded.version;
    result.seconds = seconds_since(start);
    return result;
  }

  // Follows the registry's current version of `model` (see the header).
  void update(const std::string& model, LoadedModel& loaded) {
    loaded.checked = Clock::now();
    std::string latest;
    if (!client_.get_string(keys::model_latest(options_.ns, model), latest)) {
      if (loaded.loader) return; // deleted under us: keep what runs
      throw KeyNotFoundError("model " + model + " has no published version in namespace " +
                             options_.ns + " (no " + keys::model_latest(options_.ns, model) + ")");
    }
    std::uint64_t version = 0;
    try {
      version = std::stoull(latest);
    } catch (const std::exception&) {
      if (loaded.loader) return; // a stray value: keep what runs
      throw ModelError(keys::model_latest(options_.ns, model) + " holds '" + latest.substr(0, 40) +
                       "', not a version number; publish or roll back the model again");
    }
    if (version == loaded.version && loaded.loader) return;
    if (version == loaded.refused) {
      if (!loaded.loader) throw ModelError(loaded.refusal);
      return;
    }
    try {
      load_version(model, version, loaded);
    } catch (const PackageMissingError& error) {
      if (!loaded.loader) throw;
      warn_once(loaded, version, error.what()); // compiled later: tried again next time
    } catch (const ConnectionError&) { // the database, not the version: tried again next time
      if (!loaded.loader) throw;
    } catch (const TimeoutError&) {
      if (!loaded.loader) throw;
    } catch (const ServerError&) {
      if (!loaded.loader) throw;
    } catch (const std::exception& error) { // the version itself: never tried again
      const bool ours = dynamic_cast<const Error*>(&error) != nullptr;
      loaded.refused = version;
      loaded.refusal = ours ? error.what() : "model " + model + " v" + std::to_string(version) +
                                                 " cannot be loaded: " + reason(error);
      if (!loaded.loader) {
        if (ours) throw;
        throw ModelError(loaded.refusal);
      }
      warn_once(loaded, version, loaded.refusal);
    }
  }

  void warn_once(LoadedModel& loaded, std::uint64_t version, const std::string& why) {
    if (loaded.warned == version) return;
    loaded.warned = version;
    std::cerr << "nekrs_ml: in-process inference keeps v" << loaded.version << ": " << why
              << std::endl;
  }

  void load_version(const std::string& model, std::uint64_t version, LoadedModel& loaded) {
    const std::string name = model + " v" + std::to_string(version);
    std::string blob;
    if (!client_.get_string(keys::model_weights(options_.ns, model, version), blob)) {
      throw ModelError(name + " has no weights for in-process inference (" +
                       keys::model_weights(options_.ns, model, version) +
                       "): it is not a torch.export version (a TorchScript deploy?); deploy a "
                       "torch.export program or use inferenceBackend = worker");
    }
    ModelWeights weights = parse_model_weights(std::move(blob));
    if (loaded.loader && weights.graph == loaded.graph) { // same graph: swap the weights only
      const auto start = Clock::now();
      auto constants = to_constants(weights, loaded.loader->get_constant_fqns(), name);
      install_constants(*loaded.loader, constants, /*use_inactive=*/true, name);
      loaded.loader->get_runner()->swap_constant_buffer();
      last_swap_s_ = seconds_since(start);
      loaded.constants = std::move(constants);
      loaded.version = version;
      return;
    }
    const std::string key = keys::model_package(options_.ns, model, weights.graph, device_kind(),
                                                 torch_release());
    std::string package;
    if (!client_.get_string(key, package)) {
      throw PackageMissingError(
          name + ": no AOTInductor package of its graph " + weights.graph + " for " +
          device_kind() + " with torch " + torch_release() + " (" + key + "); the trainer " +
          "compiles it in the background when the run uses inferenceBackend = inprocess, or run " +
          "`nekrs-ml compile --model " + model + " --device " + device_kind() + "`");
    }
    LoadedModel fresh;
    fresh.loader = load_package(package, weights, name);
    fresh.constants = to_constants(weights, fresh.loader->get_constant_fqns(), name);
    install_constants(*fresh.loader, fresh.constants, /*use_inactive=*/false, name);
    fresh.graph = weights.graph;
    fresh.n_in = weights.n_in;
    fresh.n_out = weights.n_out;
    fresh.version = version;
    fresh.checked = loaded.checked;
    loaded = std::move(fresh);
  }

  std::unique_ptr<Loader> load_package(const std::string& package, const ModelWeights& weights,
                                       const std::string& name) {
    ScratchPackage file(package);
    std::unordered_map<std::string, std::string> metadata;
    try {
      metadata = Loader::load_metadata_from_package(file.path(), "model");
    } catch (const std::exception& error) {
      throw ModelError(name + ": its package is not an AOTInductor package (" +
                       reason(error) + ")");
    }
    const std::pair<std::string, std::string> expected[] = {
        {"nekrs_ml.torch", torch_release()},
        {"AOTI_DEVICE_KEY", device_kind()},
        {"nekrs_ml.graph", weights.graph},
        {"nekrs_ml.n_in", std::to_string(weights.n_in)},
        {"nekrs_ml.n_out", std::to_string(weights.n_out)}};
    for (const auto& [key, value] : expected) {
      if (lookup(metadata, key) != value) {
        throw ModelError(name + ": its package does not fit (" + key + " = " +
                         lookup(metadata, key) + ", this process needs " + value +
                         "); compile it again with `nekrs-ml compile --model NAME --device " +
                         device_kind() + "` in the Python of this torch");
      }
    }
    try {
      const c10::DeviceIndex index = device_.is_cuda() && device_.has_index() ? device_.index() : -1;
      return std::make_unique<Loader>(file.path(), "model", false, 1, index);
    } catch (const std::exception& error) {
      throw ModelError(name + ": its package cannot be loaded (" +
                       reason(error) + ")");
    }
  }

  // Copies the weights (by fully qualified name) into the active buffer or, for a swap, into
  // the inactive one; every constant must be given.
  static void install_constants(Loader& loader, std::unordered_map<std::string, at::Tensor>& constants,
                                bool use_inactive, const std::string& version) {
    try {
      loader.load_constants(constants, use_inactive, /*check_full_update=*/true);
    } catch (const std::exception& error) {
      throw ModelError(version + ": its weights do not fit its package (" +
                       reason(error) + ")");
    }
  }

  // The weights as tensors on the device, named as the package's constants; every constant
  // must be given and nothing else (validate_full_updates would not catch extra names).
  std::unordered_map<std::string, at::Tensor> to_constants(const ModelWeights& weights,
                                                          const std::vector<std::string>& names,
                                                          const std::string& version) {
    std::set<std::string> wanted(names.begin(), names.end());
    std::unordered_map<std::string, at::Tensor> constants;
    for (const auto& tensor : weights.tensors) {
      if (!wanted.count(tensor.name)) {
        throw ModelError(version + ": weight " + tensor.name + " is not a constant of its package");
      }
      at::Tensor host = at::from_blob(const_cast<float*>(weights.values(tensor)), tensor.shape,
                                      at::TensorOptions().dtype(at::kFloat));
      constants[tensor.name] = host.to(device_, /*non_blocking=*/false, /*copy=*/true);
    }
    for (const auto& name : wanted) {
      if (!constants.count(name)) {
        throw ModelError(version + ": its weights lack " + name + ", a constant of its package");
      }
    }
    return constants;
  }

  Client& client_;
  InprocessOptions options_;
  at::Device device_;
  std::map<std::string, LoadedModel> models_;
  double last_swap_s_ = 0.0;
};

} // namespace

} // namespace nekrs_ml

extern "C" nekrs_ml::InprocessBackend*
nekrs_ml_create_inprocess_backend(nekrs_ml::Client* client, const nekrs_ml::InprocessOptions* options) {
  return new nekrs_ml::TorchInprocessBackend(*client, *options);
}
