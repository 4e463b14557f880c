// The C API (nekrs_ml.h) over the C++ core: each call catches every exception and turns it into
// a status code and the thread's last-error message.
#include "nekrs_ml.h"

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/inference.hpp"
#include "nekrs_ml/stream.hpp"
#include "nekrs_ml/version.hpp"

#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

struct nkml_client {
  std::unique_ptr<nekrs_ml::Client> client;
};
struct nkml_stream {
  std::unique_ptr<nekrs_ml::TrainingStream> stream;
};
struct nkml_inference {
  std::unique_ptr<nekrs_ml::InferenceClient> inference;
};

namespace {

using namespace nekrs_ml;

thread_local std::string last_error;

// Runs `body`; the status of what it threw (most specific class first) or NKML_OK.
template <typename Body> int guarded(Body body) {
  try {
    body();
    last_error.clear();
    return NKML_OK;
  } catch (const WorkerUnavailableError& e) {
    last_error = e.what();
    return NKML_E_WORKER_UNAVAILABLE;
  } catch (const TimeoutError& e) {
    last_error = e.what();
    return NKML_E_TIMEOUT;
  } catch (const ConnectionError& e) { // AuthenticationError included
    last_error = e.what();
    return NKML_E_CONNECTION;
  } catch (const KeyNotFoundError& e) {
    last_error = e.what();
    return NKML_E_NOT_FOUND;
  } catch (const TensorFormatError& e) {
    last_error = e.what();
    return NKML_E_FORMAT;
  } catch (const ConfigError& e) {
    last_error = e.what();
    return NKML_E_CONFIG;
  } catch (const ModelError& e) {
    last_error = e.what();
    return NKML_E_MODEL;
  } catch (const ServerError& e) {
    last_error = e.what();
    return NKML_E_SERVER;
  } catch (const std::exception& e) {
    last_error = e.what();
    return NKML_E_ERROR;
  } catch (...) {
    last_error = "unknown error";
    return NKML_E_ERROR;
  }
}

// Longest timeout a C API call takes (about 11.6 days). Longer ones are refused: converted to
// microseconds for the socket they would overflow and end every call after 1 us.
constexpr double kMaxTimeoutSeconds = 1e6;

void check_timeout(const char* function, const char* what, double seconds) {
  if (std::isfinite(seconds) && seconds > 0 && seconds <= kMaxTimeoutSeconds) return;
  std::ostringstream message;
  message << function << ": " << what << " " << seconds
          << " s is not valid; pass a finite number of seconds greater than 0 and at most "
          << kMaxTimeoutSeconds << " (about 11.6 days)";
  throw ConfigError(message.str());
}

void require(const void* pointer, const char* what) {
  if (!pointer) throw ConfigError(std::string(what) + " is NULL");
}

std::string text(const char* value, const char* what) {
  require(value, what);
  return value;
}

DType dtype_from_code(int code) {
  switch (code) {
  case NKML_FLOAT32: return DType::float32;
  case NKML_FLOAT64: return DType::float64;
  case NKML_INT32: return DType::int32;
  case NKML_INT64: return DType::int64;
  default:
    throw ConfigError("dtype " + std::to_string(code) + ": use NKML_FLOAT32 (1), NKML_FLOAT64 (2), "
                      "NKML_INT32 (5) or NKML_INT64 (6)");
  }
}

TensorHeader header_of(int dtype, int ndim, const int64_t* shape) {
  if (ndim < 0 || ndim > NKML_MAX_DIMS) {
    throw ConfigError("ndim = " + std::to_string(ndim) + ": a tensor has 0 to " +
                      std::to_string(NKML_MAX_DIMS) + " dimensions");
  }
  if (ndim > 0) require(shape, "shape");
  TensorHeader header{dtype_from_code(dtype), {}};
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] < 0) throw ConfigError("shape[" + std::to_string(d) + "] is negative");
    header.shape.push_back(static_cast<std::uint64_t>(shape[d]));
  }
  return header;
}

std::vector<std::string> split_addresses(const std::string& addresses) {
  std::vector<std::string> list;
  std::stringstream stream(addresses);
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (!item.empty()) list.push_back(item);
  }
  if (list.empty()) throw ConfigError("addresses: give at least one host:port or unix:/path");
  return list;
}

std::uint64_t positive(int64_t value, const char* what) {
  if (value < 0) throw ConfigError(std::string(what) + " is negative");
  return static_cast<std::uint64_t>(value);
}

} // namespace

extern "C" {

const char* nkml_last_error(void) { return last_error.c_str(); }

const char* nkml_version(void) { return nekrs_ml::library_version(); }

int nkml_client_from_env(nkml_client** out) {
  return guarded([&] {
    require(out, "client");
    *out = nullptr;
    auto handle = std::make_unique<nkml_client>();
    handle->client = std::make_unique<Client>(Client::options_from_env());
    *out = handle.release();
  });
}

int nkml_client_connect(const char* addresses, const char* password, int cluster,
                        nkml_client** out) {
  return guarded([&] {
    require(out, "client");
    *out = nullptr;
    auto handle = std::make_unique<nkml_client>();
    handle->client = std::make_unique<Client>(split_addresses(text(addresses, "addresses")),
                                              password ? password : "", cluster != 0);
    *out = handle.release();
  });
}

void nkml_client_free(nkml_client* client) { delete client; }

int nkml_client_set_timeout(nkml_client* client, double seconds) {
  return guarded([&] {
    require(client, "client");
    check_timeout("nkml_client_set_timeout", "seconds", seconds);
    client->client->set_timeout(seconds);
  });
}

int nkml_put_tensor(nkml_client* client, const char* key, int dtype, int ndim,
                    const int64_t* shape, const void* data) {
  return guarded([&] {
    require(client, "client");
    const TensorHeader header = header_of(dtype, ndim, shape);
    if (header.data_bytes() > 0) require(data, "data");
    client->client->put_tensor(text(key, "key"), header, data);
  });
}

int nkml_tensor_info(nkml_client* client, const char* key, int* dtype, int* ndim,
                     int64_t* shape) {
  return guarded([&] {
    require(client, "client");
    require(dtype, "dtype");
    require(ndim, "ndim");
    require(shape, "shape");
    std::vector<char> scratch;
    const TensorHeader header =
        client->client->get_tensor(text(key, "key"), [&](const TensorHeader& found) -> void* {
          scratch.resize(found.data_bytes() + 1);
          return scratch.data();
        });
    if (header.shape.size() > NKML_MAX_DIMS) {
      throw TensorFormatError(std::string(key) + " has " + std::to_string(header.shape.size()) +
                              " dimensions, more than NKML_MAX_DIMS");
    }
    *dtype = static_cast<int>(header.dtype);
    *ndim = static_cast<int>(header.shape.size());
    for (std::size_t d = 0; d < header.shape.size(); ++d) {
      shape[d] = static_cast<int64_t>(header.shape[d]);
    }
  });
}

int nkml_get_tensor(nkml_client* client, const char* key, int dtype, void* out,
                    size_t capacity_bytes) {
  return guarded([&] {
    require(client, "client");
    if (capacity_bytes > 0) require(out, "out");
    client->client->get_tensor(text(key, "key"), out, capacity_bytes, dtype_from_code(dtype));
  });
}

int nkml_key_exists(nkml_client* client, const char* key, int* exists) {
  return guarded([&] {
    require(client, "client");
    require(exists, "exists");
    *exists = client->client->exists(text(key, "key")) ? 1 : 0;
  });
}

int nkml_delete(nkml_client* client, const char* key) {
  return guarded([&] {
    require(client, "client");
    client->client->delete_key(text(key, "key"));
  });
}

int nkml_stream_open(nkml_client* client, const char* ns, int rank, int max_snapshots,
                     nkml_stream** out) {
  return guarded([&] {
    require(client, "client");
    require(out, "stream");
    *out = nullptr;
    StreamOptions options;
    options.ns = text(ns, "ns");
    options.rank = rank;
    options.max_snapshots = max_snapshots;
    auto handle = std::make_unique<nkml_stream>();
    handle->stream = std::make_unique<TrainingStream>(*client->client, options);
    *out = handle.release();
  });
}

void nkml_stream_free(nkml_stream* stream) { delete stream; }

int nkml_stream_put(nkml_stream* stream, long step, double time, int dtype, int64_t n,
                    int64_t n_in, const void* inputs, int64_t n_out, const void* targets,
                    int* written) {
  return guarded([&] {
    require(stream, "stream");
    require(inputs, "inputs");
    require(targets, "targets");
    const DType type = dtype_from_code(dtype);
    const PutResult result = stream->stream->put(
        step, time, TensorHeader{type, {positive(n, "n"), positive(n_in, "n_in")}}, inputs,
        TensorHeader{type, {positive(n, "n"), positive(n_out, "n_out")}}, targets);
    if (written) *written = result.written ? 1 : 0;
  });
}

int nkml_stop_requested(nkml_client* client, const char* ns, int* requested) {
  return guarded([&] {
    require(client, "client");
    require(requested, "requested");
    *requested = TrainingStream::stop_requested(*client->client, text(ns, "ns")) ? 1 : 0;
  });
}

int nkml_mark_done(nkml_client* client, const char* ns) {
  return guarded([&] {
    require(client, "client");
    TrainingStream::mark_done(*client->client, text(ns, "ns"));
  });
}

int nkml_inference_open(nkml_client* client, const char* ns, int rank, int workers,
                        double timeout, nkml_inference** out) {
  return guarded([&] {
    require(client, "client");
    require(out, "inference");
    *out = nullptr;
    check_timeout("nkml_inference_open", "timeout", timeout);
    InferenceOptions options;
    options.ns = text(ns, "ns");
    options.rank = rank;
    options.workers = workers;
    options.timeout_s = timeout;
    auto handle = std::make_unique<nkml_inference>();
    handle->inference = std::make_unique<InferenceClient>(*client->client, options);
    *out = handle.release();
  });
}

void nkml_inference_free(nkml_inference* inference) { delete inference; }

int nkml_inference_run(nkml_inference* inference, const char* model, int64_t rows, int64_t n_in,
                       const float* inputs, int64_t n_out, float* outputs, uint64_t* version) {
  return guarded([&] {
    require(inference, "inference");
    require(inputs, "inputs");
    require(outputs, "outputs");
    const InferenceResult result = inference->inference->run(
        text(model, "model"),
        TensorHeader{DType::float32, {positive(rows, "rows"), positive(n_in, "n_in")}}, inputs,
        outputs, static_cast<std::size_t>(positive(rows, "rows") * positive(n_out, "n_out")) *
                     sizeof(float));
    const std::vector<std::uint64_t> expected{positive(rows, "rows"), positive(n_out, "n_out")};
    if (result.header.shape != expected) {
      throw TensorFormatError(std::string(model) + " answered " + result.header.describe() +
                              ", not float32[" + std::to_string(rows) + ", " +
                              std::to_string(n_out) + "]");
    }
    if (version) *version = result.version;
  });
}

} // extern "C"
