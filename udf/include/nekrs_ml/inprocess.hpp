// In-process inference: the model evaluated in the solver rank's own process from an AOTInductor
// package (no request through the server, no Python). The backend lives in the optional library
// libnekrsml_torch (built when Torch is found), loaded at run time, so libnekrsml and a NekRS udf
// link no libtorch. Only the C interface of nekrs_ml/inprocess_abi.h crosses between the two
// libraries; this class wraps it.
//
// Per model it follows the registry (docs/protocol.md, "In-process inference"): every
// reload_interval_s it reads the current version; a version of the loaded graph swaps its
// weights in (double-buffered, between calls), a version of a new graph loads that graph's
// package. A version whose package is not compiled yet, or whose package does not fit (torch
// version, device, input/output widths), is not used: the previous version stays, with one warning.
#pragma once

#include "nekrs_ml/inference.hpp"

#include <memory>
#include <string>

namespace nekrs_ml {

struct InprocessOptions {
  // The namespace of the model registry it reads (a solver's NEKRS_ML_MODEL_NAMESPACE when set).
  std::string ns = NKML_KEY_DEFAULT_NAMESPACE;
  std::string device = "cpu";      // cpu, cuda or cuda:N
  int threads = 1;                 // torch intra-op threads of this process
  double reload_interval_s = 0.25; // how often the current version is checked
  // libnekrsml_torch to load; empty: NEKRS_ML_TORCH_LIBRARY, else the one beside libnekrsml.
  std::string library;
};

// The package of a model's graph does not exist (yet) for this device and torch version.
class PackageMissingError : public KeyNotFoundError {
public:
  using KeyNotFoundError::KeyNotFoundError;
};

// What an in-process backend offers beyond InferenceBackend.
class InprocessBackend : public InferenceBackend {
public:
  // Inputs and outputs in device memory of the backend's device (e.g. NekRS's o_ arrays on a
  // GPU build): no host staging. `stream` is the CUDA stream to run on (nullptr: the current).
  virtual InferenceResult run_on_device(const std::string& model, const TensorHeader& inputs_header,
                                        const void* inputs, void* outputs,
                                        std::size_t capacity_bytes, void* stream) = 0;
  // Checks the registry for a newer version of `model` now (run() does it every
  // reload_interval_s); returns the version in use afterwards (0: none).
  virtual std::uint64_t refresh(const std::string& model) = 0;
  // Seconds of the last weight swap (update of the inactive buffer and swap), or 0.
  virtual double last_swap_seconds() const = 0;
  virtual std::string torch_version() const = 0;
  // What the backend holds for `model` (JSON: state loaded | waiting | refused | unknown,
  // version, waiting_for_version, graph, device, torch, reason): report.json's package state.
  virtual std::string model_state(const std::string& model) = 0;
};

// Loads libnekrsml_torch and creates the backend. `client` must outlive it. Throws ConfigError
// when the library cannot be loaded (with the reason and the fix), speaks another version of
// the in-process ABI, or the options are invalid.
std::unique_ptr<InprocessBackend> make_inprocess_backend(Client& client,
                                                         const InprocessOptions& options);

// The path make_inprocess_backend loads for `options` (for messages and tests).
std::string inprocess_library_path(const InprocessOptions& options);

} // namespace nekrs_ml
