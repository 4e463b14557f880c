// nekrs_ml::InferenceClient — the solver side of online inference (docs/protocol.md,
// "Inference requests").
//
// One call = at most two round trips: RPUSH of the request (this rank's inputs) onto the queue
// of its model worker, then BLPOP of this rank's reply list. The reply carries the model version
// that produced it and is received straight into the caller's output buffer. Replies of earlier
// calls that timed out are recognised by their request id and discarded. A worker that stopped
// (no heartbeat) or a model that does not exist gives an error within the call's timeout.
#pragma once

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/codec.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nekrs_ml {

// The model worker stopped (its heartbeat key expired) or never started.
class WorkerUnavailableError : public TimeoutError {
public:
  using TimeoutError::TimeoutError;
};

// The worker refused the request: unknown model, wrong shape or dtype (a KeyNotFoundError or
// TensorFormatError is thrown for those, with the worker's message), or the model failed.
class ModelError : public Error {
public:
  using Error::Error;
};

struct InferenceOptions {
  std::string ns = NKML_KEY_DEFAULT_NAMESPACE; // run namespace: this solver's reply keys
  // Namespace of the model workers (their queues and heartbeats) when several solvers share
  // them (NEKRS_ML_MODEL_NAMESPACE); empty: ns. The reply key travels inside the request, so
  // a shared worker answers each solver in the solver's own namespace.
  std::string model_ns;
  int rank = 0;            // solver rank: names the reply key
  int workers = 1;         // rank R talks to worker R mod workers
  double timeout_s = 10.0; // longest wait for one reply
  // After this long without a reply the worker's heartbeat is checked, so a dead worker is
  // reported before the full timeout.
  double heartbeat_check_s = 1.0;
};

struct InferenceResult {
  TensorHeader header;       // shape and dtype of the predictions written to the buffer
  std::uint64_t version = 0; // model version that produced them
  double seconds = 0.0;      // wall time of the call
};

// Where a solver rank's predictions come from: the model workers (InferenceClient) or a backend
// evaluating the model in the rank's own process. Coupling calls run() with inputs [n, n_in] and
// a buffer for [n, n_out]; errors are those of InferenceClient::run.
class InferenceBackend {
public:
  virtual ~InferenceBackend() = default;
  virtual InferenceResult run(const std::string& model, const TensorHeader& inputs_header,
                              const void* inputs, void* outputs, std::size_t capacity_bytes) = 0;
};

class InferenceClient : public InferenceBackend {
public:
  // `client` must outlive this object. Throws ConfigError for invalid options.
  InferenceClient(Client& client, InferenceOptions options);

  // Sends `inputs` ([n, n_in], float32 as published by the trainer) to `model` and writes the
  // predictions ([n, n_out]) into `outputs` (`capacity_bytes` long). Throws TimeoutError,
  // WorkerUnavailableError, KeyNotFoundError (unknown model), TensorFormatError (wrong shape or
  // dtype, or predictions that do not fit the buffer), ModelError, ConnectionError.
  InferenceResult run(const std::string& model, const TensorHeader& inputs_header,
                      const void* inputs, void* outputs, std::size_t capacity_bytes) override;

  template <typename T>
  InferenceResult run(const std::string& model, std::uint64_t rows, std::uint64_t columns,
                      const T* inputs, T* outputs, std::size_t output_capacity) {
    return run(model, TensorHeader{dtype_of<T>(), {rows, columns}}, inputs, outputs,
               output_capacity * sizeof(T));
  }

  // True when the worker of this rank has a live heartbeat.
  bool worker_alive();

  const InferenceOptions& options() const { return options_; }
  const std::string& queue_key() const { return queue_; }
  const std::string& heartbeat_key() const { return heartbeat_; }
  std::string reply_key(const std::string& model) const;
  // The namespace of the model workers (model_ns, else ns).
  const std::string& model_namespace() const { return options_.model_ns; }

private:
  Client& client_;
  InferenceOptions options_;
  std::string queue_;
  std::string heartbeat_;
  std::uint64_t next_request_ = 1;
};

} // namespace nekrs_ml
