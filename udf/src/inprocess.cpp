#include "nekrs_ml/inprocess.hpp"

#include "nekrs_ml/errors.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <string>

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

} // namespace

std::string inprocess_library_path(const InprocessOptions& options) {
  if (!options.library.empty()) return options.library;
  const char* env = std::getenv("NEKRS_ML_TORCH_LIBRARY");
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
  using Factory = InprocessBackend* (*)(Client*, const InprocessOptions*);
  auto factory = reinterpret_cast<Factory>(dlsym(library, "nekrs_ml_create_inprocess_backend"));
  if (!factory) {
    throw ConfigError("inferenceBackend = inprocess: " + path + " is not a nekrs_ml in-process "
                      "backend (no nekrs_ml_create_inprocess_backend)");
  }
  // The library stays loaded for the life of the process: torch does not support unloading.
  return std::unique_ptr<InprocessBackend>(factory(&client, &options));
}

} // namespace nekrs_ml
