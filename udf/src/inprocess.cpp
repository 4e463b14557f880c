#include "nekrs_ml/inprocess.hpp"

#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inprocess_abi.h"
#include "nekrs_ml/protocol.h"

#include <dlfcn.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace nekrs_ml {

namespace {

constexpr const char* kLibraryName = "libnekrsml_torch.so";

// The directory of libnekrsml itself: libnekrsml_torch is installed beside it.
std::string own_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&inprocess_library_path), &info) == 0 || !info.dli_fname) {
    return "";
  }
  const std::string path = info.dli_fname;
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// The entry points of libnekrsml_torch (nekrs_ml/inprocess_abi.h).
struct Entries {
  decltype(&nkml_inprocess_abi_version) abi_version = nullptr;
  decltype(&nkml_inprocess_torch_version) torch_version = nullptr;
  decltype(&nkml_inprocess_create) create = nullptr;
  decltype(&nkml_inprocess_destroy) destroy = nullptr;
  decltype(&nkml_inprocess_run) run = nullptr;
  decltype(&nkml_inprocess_refresh) refresh = nullptr;
  decltype(&nkml_inprocess_last_swap_seconds) last_swap_seconds = nullptr;
  decltype(&nkml_inprocess_model_state) model_state = nullptr;
  decltype(&nkml_inprocess_last_error) last_error = nullptr;
};

template <typename Function>
void resolve(void* library, const std::string& path, const char* name, Function& function) {
  function = reinterpret_cast<Function>(dlsym(library, name));
  if (!function) {
    throw ConfigError("inferenceBackend = inprocess: " + path + " is not a nekrs_ml in-process "
                      "backend of this version (no " + name + "); reinstall nekrs_ml so both "
                      "libraries come from one build");
  }
}

// The libnekrsml exception of a status code from the backend.
[[noreturn]] void raise(int status, const std::string& message) {
  switch (status) {
  case NKML_E_CONFIG: throw ConfigError(message);
  case NKML_E_NOT_FOUND: throw KeyNotFoundError(message);
  case NKML_E_PACKAGE_MISSING: throw PackageMissingError(message);
  case NKML_E_MODEL: throw ModelError(message);
  case NKML_E_FORMAT: throw TensorFormatError(message);
  case NKML_E_CONNECTION: throw ConnectionError(message);
  case NKML_E_TIMEOUT: throw TimeoutError(message);
  case NKML_E_SERVER: throw ServerError(message);
  default: throw Error(message);
  }
}

class LoadedBackend final : public InprocessBackend {
public:
  LoadedBackend(Client& client, const InprocessOptions& options, const Entries& entries,
                const std::string& path)
      : client_(client), options_(options), entries_(entries) {
    nkml_inprocess_options abi{};
    abi.abi_version = NKML_INPROCESS_ABI_VERSION;
    abi.ns = options_.ns.c_str();
    abi.device = options_.device.c_str();
    abi.threads = options_.threads;
    abi.reload_interval_s = options_.reload_interval_s;
    abi.fetch = &LoadedBackend::fetch;
    abi.fetch_context = this;
    abi.log = &LoadedBackend::log;
    abi.log_context = this;
    char error[2048] = {0};
    const int status = entries_.create(&abi, &handle_, error, sizeof(error));
    if (status != NKML_OK || !handle_) {
      raise(status == NKML_OK ? NKML_E_ERROR : status,
            std::string(error[0] ? error : "the backend could not be created") + " (" + path + ")");
    }
  }
  ~LoadedBackend() override { entries_.destroy(handle_); }
  LoadedBackend(const LoadedBackend&) = delete;
  LoadedBackend& operator=(const LoadedBackend&) = delete;

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
    std::uint64_t version = 0;
    check(entries_.refresh(handle_, model.c_str(), &version));
    return version;
  }

  double last_swap_seconds() const override { return entries_.last_swap_seconds(handle_); }
  std::string torch_version() const override { return entries_.torch_version(); }

  std::string model_state(const std::string& model) override {
    std::vector<char> json(4096);
    int status = entries_.model_state(handle_, model.c_str(), json.data(), json.size());
    if (status == NKML_E_CONFIG) { // the reason is long: once more with room for it
      json.resize(1 << 16);
      status = entries_.model_state(handle_, model.c_str(), json.data(), json.size());
    }
    check(status);
    return json.data();
  }

private:
  InferenceResult evaluate(const std::string& model, const TensorHeader& header,
                           const void* inputs, void* outputs, std::size_t capacity_bytes,
                           bool on_device, void* stream) {
    nkml_inprocess_result result{};
    fetch_error_.clear();
    check(entries_.run(handle_, model.c_str(), static_cast<int>(header.dtype), header.shape.data(),
                       static_cast<int>(header.shape.size()), inputs, outputs, capacity_bytes,
                       on_device ? 1 : 0, stream, &result));
    InferenceResult answer;
    answer.header = TensorHeader{DType::float32, {result.rows, result.columns}};
    answer.version = result.version;
    answer.seconds = result.seconds;
    return answer;
  }

  void check(int status) {
    if (status == NKML_OK) return;
    std::string message = entries_.last_error(handle_);
    // a database failure: the client's own words say which server and why
    const bool database = status == NKML_E_CONNECTION || status == NKML_E_TIMEOUT ||
                          status == NKML_E_SERVER;
    if (database && !fetch_error_.empty()) message = fetch_error_;
    raise(status, message);
  }

  static int fetch(void* context, const char* key, const char** data, std::size_t* size) {
    auto* self = static_cast<LoadedBackend*>(context);
    try {
      if (!self->client_.get_string(key, self->fetched_)) return NKML_E_NOT_FOUND;
      *data = self->fetched_.data();
      *size = self->fetched_.size();
      return NKML_OK;
    } catch (const TimeoutError& error) {
      self->fetch_error_ = error.what();
      return NKML_E_TIMEOUT;
    } catch (const ConnectionError& error) {
      self->fetch_error_ = error.what();
      return NKML_E_CONNECTION;
    } catch (const ServerError& error) {
      self->fetch_error_ = error.what();
      return NKML_E_SERVER;
    } catch (const std::exception& error) {
      self->fetch_error_ = error.what();
      return NKML_E_ERROR;
    }
  }

  static void log(void*, const char* message) {
    std::cerr << "nekrs_ml: " << (message ? message : "") << std::endl;
  }

  Client& client_;
  InprocessOptions options_;
  Entries entries_;
  nkml_inprocess_backend* handle_ = nullptr;
  std::string fetched_;     // the bytes of the last fetch, read by the backend before its next one
  std::string fetch_error_; // the client's message of the last failed fetch
};

} // namespace

std::string inprocess_library_path(const InprocessOptions& options) {
  if (!options.library.empty()) return options.library;
  const char* env = std::getenv(NKML_ENV_TORCH_LIBRARY);
  if (env && *env) return env;
  return own_directory() + "/" + kLibraryName;
}

std::unique_ptr<InprocessBackend> make_inprocess_backend(Client& client,
                                                         const InprocessOptions& options) {
  if (options.threads < 1) throw ConfigError("inprocessThreads = " + std::to_string(options.threads) +
                                             ": must be >= 1");
  if (!(options.reload_interval_s > 0)) throw ConfigError("reloadInterval: must be > 0");
  const std::string path = inprocess_library_path(options);
  // RTLD_GLOBAL: libtorch's own plugins (e.g. the AOTInductor runtime) resolve against it.
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!library) {
    const char* reason = dlerror();
    throw ConfigError("inferenceBackend = inprocess: cannot load " + path + " (" +
                      (reason ? reason : "unknown reason") +
                      "); it is built with nekrs_ml when CMake finds Torch (pip install torch, "
                      "then reinstall nekrs_ml), or point NEKRS_ML_TORCH_LIBRARY at it; or use "
                      "inferenceBackend = worker");
  }
  // The library stays loaded for the life of the process: torch does not support unloading.
  Entries entries;
  resolve(library, path, "nkml_inprocess_abi_version", entries.abi_version);
  const std::uint32_t version = entries.abi_version();
  if (version != NKML_INPROCESS_ABI_VERSION) {
    throw ConfigError("inferenceBackend = inprocess: " + path + " speaks in-process ABI version " +
                      std::to_string(version) + ", this libnekrsml " +
                      std::to_string(NKML_INPROCESS_ABI_VERSION) +
                      "; reinstall nekrs_ml so both libraries come from one build (or point "
                      "NEKRS_ML_TORCH_LIBRARY at the matching one)");
  }
  resolve(library, path, "nkml_inprocess_torch_version", entries.torch_version);
  resolve(library, path, "nkml_inprocess_create", entries.create);
  resolve(library, path, "nkml_inprocess_destroy", entries.destroy);
  resolve(library, path, "nkml_inprocess_run", entries.run);
  resolve(library, path, "nkml_inprocess_refresh", entries.refresh);
  resolve(library, path, "nkml_inprocess_last_swap_seconds", entries.last_swap_seconds);
  resolve(library, path, "nkml_inprocess_model_state", entries.model_state);
  resolve(library, path, "nkml_inprocess_last_error", entries.last_error);
  return std::make_unique<LoadedBackend>(client, options, entries, path);
}

} // namespace nekrs_ml
