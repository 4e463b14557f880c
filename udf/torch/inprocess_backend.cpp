// libnekrsml_torch: the in-process inference backend on libtorch's AOTInductor package loader,
// behind the C boundary of nekrs_ml/inprocess_abi.h (libnekrsml loads it with dlopen). The only
// translation unit of nekrs_ml that includes torch. It links neither libnekrsml nor hiredis:
// keys are read through the caller's fetch callback, the weights parser is compiled in, and no
// C++ type or exception leaves it (every entry point converts them into a status code and text).
// One file on purpose: every part of it uses torch, whose headers dominate the build time, so
// one translation unit compiles them once.
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inprocess_abi.h"
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
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

#define NKML_EXPORT extern "C" __attribute__((visibility("default")))

namespace nekrs_ml {

namespace {

using Clock = std::chrono::steady_clock;
using Loader = torch::inductor::AOTIModelPackageLoader;

// A failure with its C status code: what an entry point returns, and the message beside it.
class Failure : public std::runtime_error {
public:
  Failure(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

private:
  int code_;
};

Failure config_error(const std::string& text) { return Failure(NKML_E_CONFIG, text); }
Failure model_error(const std::string& text) { return Failure(NKML_E_MODEL, text); }
Failure format_error(const std::string& text) { return Failure(NKML_E_FORMAT, text); }

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

const std::string& torch_release() {
  static const std::string release = std::to_string(TORCH_VERSION_MAJOR) + "." +
                                     std::to_string(TORCH_VERSION_MINOR) + "." +
                                     std::to_string(TORCH_VERSION_PATCH);
  return release;
}

at::Device parse_device(const std::string& text) {
  if (text == "cpu") return at::Device(at::kCPU);
  if (text.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA()) {
      throw config_error("inprocessDevice = " + text + ": this libtorch has no CUDA device (a CPU "
                         "build of torch?); use cpu");
    }
    try {
      return at::Device(text);
    } catch (const c10::Error&) {
    }
  }
  throw config_error("inprocessDevice = " + text + ": use cpu, cuda or cuda:N");
}

// "float32[4, 2]" for messages (the wire format's dtype codes).
std::string describe(int dtype, const std::uint64_t* shape, int ndim) {
  std::string text = dtype == NKML_FLOAT32 ? "float32"
                     : dtype == NKML_FLOAT64 ? "float64"
                                             : "dtype" + std::to_string(dtype);
  text += '[';
  for (int i = 0; i < ndim; ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + ']';
}

std::string json_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char code[8];
      std::snprintf(code, sizeof(code), "\\u%04x", c);
      out += code;
    } else {
      out += c;
    }
  }
  return out;
}

// The loader reads a package from a file: one in a private directory, removed once loaded.
class ScratchPackage {
public:
  ScratchPackage(const char* bytes, std::size_t size) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/nekrs_ml-package-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (!mkdtemp(buffer.data())) {
      throw config_error("in-process inference: cannot create a directory like " + pattern + " (" +
                         std::strerror(errno) + "); set TMPDIR to a writable directory");
    }
    directory_ = buffer.data();
    path_ = directory_ + "/model.pt2";
    std::ofstream out(path_, std::ios::binary);
    out.write(bytes, static_cast<std::streamsize>(size));
    out.close();
    if (!out) {
      std::remove(path_.c_str());
      rmdir(directory_.c_str());
      throw config_error("in-process inference: cannot write " + path_ +
                         " (disk full?); set TMPDIR to a directory with room");
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

// A value of a flat JSON object written by nekrs_ml (the package state): the text of "key": "..."
// or of "key": number, else "".
std::string json_field(const std::string& json, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  std::size_t at = json.find(quoted);
  if (at == std::string::npos) return "";
  at = json.find(':', at + quoted.size());
  if (at == std::string::npos) return "";
  ++at;
  while (at < json.size() && json[at] == ' ') ++at;
  if (at < json.size() && json[at] == '"') {
    std::string value;
    for (++at; at < json.size() && json[at] != '"'; ++at) {
      if (json[at] == '\\' && at + 1 < json.size()) ++at;
      value += json[at];
    }
    return value;
  }
  const std::size_t end = json.find_first_of(",}", at);
  return json.substr(at, end == std::string::npos ? std::string::npos : end - at);
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
  // The newest version not in use yet and why (its package is missing, the database failed).
  std::uint64_t waiting_for = 0;
  std::string waiting_reason;
};

class TorchInprocessBackend {
public:
  explicit TorchInprocessBackend(const nkml_inprocess_options& options)
      : ns_(options.ns ? options.ns : NKML_KEY_DEFAULT_NAMESPACE), fetch_(options.fetch),
        fetch_context_(options.fetch_context), log_(options.log), log_context_(options.log_context),
        threads_(options.threads), reload_interval_s_(options.reload_interval_s),
        device_(parse_device(options.device ? options.device : "cpu")) {
    if (!fetch_) throw config_error("in-process inference: no fetch callback given");
    // One intra-op thread per rank by default: a solver runs a rank per core, and torch's
    // default pool (a thread per core in every rank) oversubscribes the node.
    at::set_num_threads(threads_);
  }

  nkml_inprocess_result evaluate(const std::string& model, int dtype, const std::uint64_t* shape,
                                 int ndim, const void* inputs, void* outputs,
                                 std::size_t capacity_bytes, bool on_device, void* stream) {
    const auto start = Clock::now();
    LoadedModel& loaded = models_[model];
    if (!loaded.loader || seconds_since(loaded.checked) >= reload_interval_s_) {
      update(model, loaded);
    }
    if (dtype != NKML_FLOAT32 || ndim != 2 || static_cast<std::int64_t>(shape[1]) != loaded.n_in) {
      throw format_error(model + " v" + std::to_string(loaded.version) + " takes float32[n, " +
                         std::to_string(loaded.n_in) + "], got " + describe(dtype, shape, ndim));
    }
    const auto rows = static_cast<std::int64_t>(shape[0]);
    const std::size_t needed = static_cast<std::size_t>(rows * loaded.n_out) * sizeof(float);
    if (capacity_bytes < needed) {
      throw format_error(model + ": the output buffer holds " + std::to_string(capacity_bytes) +
                         " bytes, the predictions need " + std::to_string(needed));
    }
    c10::InferenceMode guard;
    const auto floats = at::TensorOptions().dtype(at::kFloat);
    const auto where = on_device ? floats.device(device_) : floats;
    std::vector<at::Tensor> answer;
    try { // torch's errors (a failing kernel, device memory) become model errors
      at::Tensor x = at::from_blob(const_cast<void*>(inputs), {rows, loaded.n_in}, where);
      if (!on_device && device_.is_cuda()) x = x.to(device_);
      answer = loaded.loader->run({x}, stream);
      if (answer.size() != 1 || answer[0].dim() != 2 || answer[0].size(0) != rows ||
          answer[0].size(1) != loaded.n_out || answer[0].scalar_type() != at::kFloat) {
        throw format_error(model + " v" + std::to_string(loaded.version) +
                           " answered something other than float32[n, n_out]");
      }
      at::Tensor target = at::from_blob(outputs, {rows, loaded.n_out}, where);
      target.copy_(answer[0]);
    } catch (const Failure&) {
      throw;
    } catch (const std::exception& error) {
      throw model_error(model + " v" + std::to_string(loaded.version) + " failed: " + reason(error));
    }
    nkml_inprocess_result result{};
    result.rows = static_cast<std::uint64_t>(rows);
    result.columns = static_cast<std::uint64_t>(loaded.n_out);
    result.version = loaded.version;
    result.seconds = seconds_since(start);
    return result;
  }

  std::uint64_t refresh(const std::string& model) {
    LoadedModel& loaded = models_[model];
    update(model, loaded);
    return loaded.version;
  }

  double last_swap_seconds() const { return last_swap_s_; }

  std::string model_state(const std::string& model) const {
    const auto found = models_.find(model);
    std::string state = "unknown", why;
    std::uint64_t version = 0, waiting_for = 0;
    std::string graph;
    if (found != models_.end()) {
      const LoadedModel& loaded = found->second;
      version = loaded.version;
      graph = loaded.graph;
      waiting_for = loaded.waiting_for;
      if (loaded.waiting_for) {
        state = "waiting";
        why = loaded.waiting_reason;
      } else if (loaded.refused && loaded.refused > loaded.version) {
        state = "refused";
        why = loaded.refusal;
      } else if (loaded.loader) {
        state = "loaded";
      }
    }
    return "{\"state\": \"" + state + "\", \"version\": " + std::to_string(version) +
           ", \"waiting_for_version\": " + std::to_string(waiting_for) + ", \"graph\": \"" +
           json_escape(graph) + "\", \"device\": \"" + device_kind() + "\", \"torch\": \"" +
           torch_release() + "\", \"reason\": \"" + json_escape(why) + "\"}";
  }

  std::string last_error;

private:
  std::string device_kind() const { return device_.is_cuda() ? "cuda" : "cpu"; }

  // The bytes of `key` (valid until the next fetch), false when it does not exist.
  bool fetch(const std::string& key, std::string& value) {
    const char* data = nullptr;
    std::size_t size = 0;
    const int status = fetch_(fetch_context_, key.c_str(), &data, &size);
    if (status == NKML_E_NOT_FOUND) return false;
    if (status != NKML_OK) throw Failure(status, "reading " + key + " failed");
    value.assign(data ? data : "", data ? size : 0);
    return true;
  }

  void warn(const std::string& text) {
    if (log_) {
      log_(log_context_, text.c_str());
    } else {
      std::cerr << "nekrs_ml: " << text << std::endl;
    }
  }

  static bool database_failure(int code) {
    return code == NKML_E_CONNECTION || code == NKML_E_TIMEOUT || code == NKML_E_SERVER;
  }

  // Follows the registry's current version of `model`: a version of the loaded graph swaps its
  // weights in (double-buffered, between calls), a version of a new graph loads that graph's
  // package. A version that cannot be used yet or ever keeps the previous one, with one warning.
  void update(const std::string& model, LoadedModel& loaded) {
    loaded.checked = Clock::now();
    std::string latest;
    if (!fetch(keys::model_latest(ns_, model), latest)) {
      if (loaded.loader) return; // deleted under us: keep what runs
      loaded.waiting_for = 0;
      loaded.waiting_reason = "no published version";
      throw Failure(NKML_E_NOT_FOUND, "model " + model + " has no published version in namespace " +
                                          ns_ + " (no " + keys::model_latest(ns_, model) + ")");
    }
    std::uint64_t version = 0;
    try {
      version = std::stoull(latest);
    } catch (const std::exception&) {
      if (loaded.loader) return; // a stray value: keep what runs
      throw model_error(keys::model_latest(ns_, model) + " holds '" + latest.substr(0, 40) +
                        "', not a version number; publish or roll back the model again");
    }
    if (version == loaded.version && loaded.loader) {
      loaded.waiting_for = 0;
      return;
    }
    if (version == loaded.refused) {
      if (!loaded.loader) throw model_error(loaded.refusal);
      return;
    }
    try {
      load_version(model, version, loaded);
      loaded.waiting_for = 0;
      loaded.waiting_reason.clear();
    } catch (const Failure& failure) {
      if (failure.code() == NKML_E_PACKAGE_MISSING || database_failure(failure.code())) {
        // compiled later, or the database, not the version: tried again next time
        loaded.waiting_for = version;
        loaded.waiting_reason = failure.what();
        if (!loaded.loader) throw;
        if (failure.code() == NKML_E_PACKAGE_MISSING) warn_once(loaded, version, failure.what());
        return;
      }
      refuse(loaded, version, failure.what());
      if (!loaded.loader) throw;
    } catch (const std::exception& error) { // the version itself: never tried again
      refuse(loaded, version, "model " + model + " v" + std::to_string(version) +
                                  " cannot be loaded: " + reason(error));
      if (!loaded.loader) throw model_error(loaded.refusal);
    }
  }

  void refuse(LoadedModel& loaded, std::uint64_t version, const std::string& why) {
    loaded.refused = version;
    loaded.refusal = why;
    loaded.waiting_for = 0;
    if (loaded.loader) warn_once(loaded, version, why);
  }

  void warn_once(LoadedModel& loaded, std::uint64_t version, const std::string& why) {
    if (loaded.warned == version) return;
    loaded.warned = version;
    warn("in-process inference keeps v" + std::to_string(loaded.version) + ": " + why);
  }

  // Why a package is not there yet, from the state `nekrs-ml compile` keeps beside it.
  std::string package_progress(const std::string& model, const std::string& graph) {
    std::string state;
    try {
      if (!fetch(keys::package_state(ns_, model, graph, device_kind(), torch_release()), state)) {
        return "no compilation of it has started";
      }
    } catch (const Failure&) {
      return "its compilation state could not be read";
    }
    const std::string what = json_field(state, "state");
    const std::string host = json_field(state, "host");
    if (what == "compiling") {
      const double started = std::atof(json_field(state, "started").c_str());
      const double elapsed = started > 0 ? static_cast<double>(std::time(nullptr)) - started : 0;
      return "compiling for " + std::to_string(static_cast<long long>(std::max(0.0, elapsed))) +
             " s" + (host.empty() ? "" : " on " + host);
    }
    if (what == "failed") return "its compilation failed: " + json_field(state, "reason");
    if (what == "stopped") return "its compilation was stopped: " + json_field(state, "reason");
    return "compilation state '" + what + "'";
  }

  void load_version(const std::string& model, std::uint64_t version, LoadedModel& loaded) {
    const std::string name = model + " v" + std::to_string(version);
    std::string blob;
    if (!fetch(keys::model_weights(ns_, model, version), blob)) {
      throw model_error(name + " has no weights for in-process inference (" +
                        keys::model_weights(ns_, model, version) +
                        "): it is not a torch.export version (a TorchScript deploy?); deploy a "
                        "torch.export program or use inferenceBackend = worker");
    }
    ModelWeights weights;
    try {
      weights = parse_model_weights(std::move(blob));
    } catch (const std::exception& error) {
      throw model_error(name + ": " + error.what());
    }
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
    const std::string key = keys::model_package(ns_, model, weights.graph, device_kind(),
                                                 torch_release());
    std::string package;
    if (!fetch(key, package)) {
      throw Failure(
          NKML_E_PACKAGE_MISSING,
          name + ": waiting for the " + device_kind() + " package of its graph " + weights.graph +
              " for torch " + torch_release() + " (" + package_progress(model, weights.graph) + "; " + key +
              "); the trainer compiles it in the background when the run uses inferenceBackend = "
              "inprocess, or run `nekrs-ml compile --model " + model + " --device " +
              device_kind() + "`");
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
    fresh.warned = loaded.warned;
    loaded = std::move(fresh);
  }

  std::unique_ptr<Loader> load_package(const std::string& package, const ModelWeights& weights,
                                       const std::string& name) {
    ScratchPackage file(package.data(), package.size());
    std::unordered_map<std::string, std::string> metadata;
    try {
      metadata = Loader::load_metadata_from_package(file.path(), "model");
    } catch (const std::exception& error) {
      throw model_error(name + ": its package is not an AOTInductor package (" + reason(error) +
                        ")");
    }
    const std::pair<std::string, std::string> expected[] = {
        {"nekrs_ml.torch", torch_release()},
        {"AOTI_DEVICE_KEY", device_kind()},
        {"nekrs_ml.graph", weights.graph},
        {"nekrs_ml.n_in", std::to_string(weights.n_in)},
        {"nekrs_ml.n_out", std::to_string(weights.n_out)}};
    for (const auto& [key, value] : expected) {
      if (lookup(metadata, key) != value) {
        throw model_error(name + ": its package does not fit (" + key + " = " +
                          lookup(metadata, key) + ", this process needs " + value +
                          "); compile it again with `nekrs-ml compile --model NAME --device " +
                          device_kind() + "` in the Python of this torch");
      }
    }
    try {
      const c10::DeviceIndex index = device_.is_cuda() && device_.has_index() ? device_.index() : -1;
      return std::make_unique<Loader>(file.path(), "model", false, 1, index);
    } catch (const std::exception& error) {
      throw model_error(name + ": its package cannot be loaded (" + reason(error) + ")");
    }
  }

  // Copies the weights (by fully qualified name) into the active buffer or, for a swap, into
  // the inactive one; every constant must be given.
  static void install_constants(Loader& loader, std::unordered_map<std::string, at::Tensor>& constants,
                                bool use_inactive, const std::string& version) {
    try {
      loader.load_constants(constants, use_inactive, /*check_full_update=*/true);
    } catch (const std::exception& error) {
      throw model_error(version + ": its weights do not fit its package (" + reason(error) + ")");
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
        throw model_error(version + ": weight " + tensor.name + " is not a constant of its package");
      }
      at::Tensor host = at::from_blob(const_cast<float*>(weights.values(tensor)), tensor.shape,
                                      at::TensorOptions().dtype(at::kFloat));
      constants[tensor.name] = host.to(device_, /*non_blocking=*/false, /*copy=*/true);
    }
    for (const auto& name : wanted) {
      if (!constants.count(name)) {
        throw model_error(version + ": its weights lack " + name + ", a constant of its package");
      }
    }
    return constants;
  }

  std::string ns_;
  nkml_inprocess_fetch_fn fetch_;
  void* fetch_context_;
  nkml_inprocess_log_fn log_;
  void* log_context_;
  int threads_;
  double reload_interval_s_;
  at::Device device_;
  std::map<std::string, LoadedModel> models_;
  double last_swap_s_ = 0.0;
};

// Runs `body`, turning any exception into a status code and `error`'s text.
template <typename Body>
int guarded(std::string& error, Body&& body) {
  try {
    error.clear();
    body();
    return NKML_OK;
  } catch (const Failure& failure) {
    error = failure.what();
    return failure.code();
  } catch (const ConfigError& failure) {
    error = failure.what();
    return NKML_E_CONFIG;
  } catch (const TensorFormatError& failure) {
    error = failure.what();
    return NKML_E_FORMAT;
  } catch (const std::exception& failure) {
    error = reason(failure);
    return NKML_E_ERROR;
  } catch (...) {
    error = "in-process inference: unknown failure";
    return NKML_E_ERROR;
  }
}

void copy_text(const std::string& text, char* out, std::size_t capacity) {
  if (!out || capacity == 0) return;
  const std::size_t n = std::min(text.size(), capacity - 1);
  std::memcpy(out, text.data(), n);
  out[n] = '\0';
}

} // namespace

} // namespace nekrs_ml

struct nkml_inprocess_backend {
  explicit nkml_inprocess_backend(const nkml_inprocess_options& options) : impl(options) {}
  nekrs_ml::TorchInprocessBackend impl;
};

using nekrs_ml::guarded;

NKML_EXPORT uint32_t nkml_inprocess_abi_version(void) { return NKML_INPROCESS_ABI_VERSION; }

NKML_EXPORT const char* nkml_inprocess_torch_version(void) {
  return nekrs_ml::torch_release().c_str();
}

NKML_EXPORT int nkml_inprocess_create(const nkml_inprocess_options* options,
                                      nkml_inprocess_backend** backend, char* error,
                                      size_t error_capacity) {
  std::string message;
  const int status = guarded(message, [&] {
    if (!options || !backend) throw nekrs_ml::config_error("nkml_inprocess_create: NULL argument");
    *backend = nullptr;
    if (options->abi_version != NKML_INPROCESS_ABI_VERSION) {
      throw nekrs_ml::config_error(
          "libnekrsml_torch speaks in-process ABI " + std::to_string(NKML_INPROCESS_ABI_VERSION) +
          ", its caller " + std::to_string(options->abi_version) + "; rebuild both together");
    }
    if (options->threads < 1) {
      throw nekrs_ml::config_error("inprocessThreads = " + std::to_string(options->threads) +
                                   ": must be >= 1");
    }
    if (!(options->reload_interval_s > 0)) {
      throw nekrs_ml::config_error("reloadInterval: must be > 0");
    }
    *backend = new nkml_inprocess_backend(*options);
  });
  nekrs_ml::copy_text(message, error, error_capacity);
  return status;
}

NKML_EXPORT void nkml_inprocess_destroy(nkml_inprocess_backend* backend) { delete backend; }

NKML_EXPORT int nkml_inprocess_run(nkml_inprocess_backend* backend, const char* model, int dtype,
                                   const uint64_t* shape, int ndim, const void* inputs,
                                   void* outputs, size_t capacity_bytes, int on_device,
                                   void* stream, nkml_inprocess_result* result) {
  if (!backend) return NKML_E_CONFIG;
  return guarded(backend->impl.last_error, [&] {
    if (!model || !shape || ndim < 0 || !result) {
      throw nekrs_ml::config_error("nkml_inprocess_run: NULL argument");
    }
    *result = backend->impl.evaluate(model, dtype, shape, ndim, inputs, outputs, capacity_bytes,
                                     on_device != 0, stream);
  });
}

NKML_EXPORT int nkml_inprocess_refresh(nkml_inprocess_backend* backend, const char* model,
                                       uint64_t* version) {
  if (!backend) return NKML_E_CONFIG;
  return guarded(backend->impl.last_error, [&] {
    if (!model || !version) throw nekrs_ml::config_error("nkml_inprocess_refresh: NULL argument");
    *version = backend->impl.refresh(model);
  });
}

NKML_EXPORT double nkml_inprocess_last_swap_seconds(const nkml_inprocess_backend* backend) {
  return backend ? backend->impl.last_swap_seconds() : 0.0;
}

NKML_EXPORT int nkml_inprocess_model_state(nkml_inprocess_backend* backend, const char* model,
                                           char* json, size_t capacity) {
  if (!backend) return NKML_E_CONFIG;
  return guarded(backend->impl.last_error, [&] {
    if (!model || !json) throw nekrs_ml::config_error("nkml_inprocess_model_state: NULL argument");
    const std::string text = backend->impl.model_state(model);
    if (text.size() + 1 > capacity) {
      throw nekrs_ml::config_error("nkml_inprocess_model_state: " + std::to_string(text.size() + 1) +
                                   " bytes needed");
    }
    nekrs_ml::copy_text(text, json, capacity);
  });
}

NKML_EXPORT const char* nkml_inprocess_last_error(const nkml_inprocess_backend* backend) {
  return backend ? backend->impl.last_error.c_str() : "no backend";
}
