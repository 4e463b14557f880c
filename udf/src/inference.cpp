// nekrs_ml::InferenceClient: request/reply with a model worker through two Redis lists.
#include "nekrs_ml/inference.hpp"

#include "nekrs_ml/keys.hpp"

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstring>
#include <random>
#include <unistd.h>

namespace nekrs_ml {

namespace {

using Clock = std::chrono::steady_clock;

// Envelopes of docs/protocol.md ("Inference requests"); integers little-endian.
constexpr char kRequestMagic[4] = {'N', 'K', 'I', 'Q'};
constexpr char kReplyMagic[4] = {'N', 'K', 'I', 'R'};
constexpr std::uint8_t kEnvelopeVersion = 1;
constexpr std::size_t kEnvelopeBytes = 24;

enum ReplyStatus : std::uint8_t {
  reply_ok = 0,
  reply_unknown_model = 1,
  reply_bad_input = 2,
  reply_model_failed = 3,
};

template <typename T> void put_le(std::string& out, std::size_t at, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out[at + i] = static_cast<char>((static_cast<std::uint64_t>(value) >> (8 * i)) & 0xff);
  }
}

template <typename T> T get_le(const std::string& in, std::size_t at) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    value |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  }
  return static_cast<T>(value);
}

std::string request_envelope(std::uint64_t id, const std::string& reply_key,
                             const std::string& model, double timeout_s) {
  std::string envelope(kEnvelopeBytes, '\0');
  std::memcpy(envelope.data(), kRequestMagic, 4);
  envelope[4] = static_cast<char>(kEnvelopeVersion);
  put_le<std::uint16_t>(envelope, 6, static_cast<std::uint16_t>(reply_key.size()));
  put_le<std::uint16_t>(envelope, 8, static_cast<std::uint16_t>(model.size()));
  const double timeout_ms = std::min(timeout_s * 1e3, 4.0e9);
  put_le<std::uint32_t>(envelope, 12, static_cast<std::uint32_t>(std::ceil(timeout_ms)));
  put_le<std::uint64_t>(envelope, 16, id);
  return envelope + reply_key + model;
}

// Request ids start at a random value, so a restarted solver never takes the reply of a call
// its earlier incarnation made as its own.
std::uint64_t first_request_id() {
  std::random_device device;
  std::seed_seq seed{device(), device(), static_cast<unsigned>(::getpid()),
                     static_cast<unsigned>(Clock::now().time_since_epoch().count())};
  std::mt19937_64 engine(seed);
  return (engine() >> 1) + 1;
}

bool valid_model_name(const std::string& model) {
  return !model.empty() && model.size() <= 200 &&
         std::none_of(model.begin(), model.end(), [](char c) {
           return c == '{' || c == '}' || c == ':' || std::isspace(static_cast<unsigned char>(c));
         });
}

} // namespace

InferenceClient::InferenceClient(Client& client, InferenceOptions options)
    : client_(client), options_(std::move(options)), next_request_(first_request_id()) {
  if (options_.rank < 0) throw ConfigError("InferenceClient: rank must be >= 0");
  if (options_.workers < 1) {
    throw ConfigError("InferenceClient: workers must be >= 1 (the [NEKRS_ML] key workers)");
  }
  if (!(options_.timeout_s > 0) || !(options_.heartbeat_check_s > 0)) {
    throw ConfigError("InferenceClient: timeout and heartbeat_check must be positive seconds");
  }
  if (options_.model_ns.empty()) options_.model_ns = options_.ns;
  if (!keys::valid_namespace(options_.model_ns)) {
    throw ConfigError("InferenceClient: model namespace '" + options_.model_ns +
                      "' is not valid: use a name without '{', '}' or ':' (" +
                      NKML_ENV_MODEL_NAMESPACE + ")");
  }
  const int worker = options_.rank % options_.workers;
  queue_ = keys::inference_queue(options_.model_ns, worker);
  heartbeat_ = keys::worker_heartbeat(options_.model_ns, worker);
}

std::string InferenceClient::reply_key(const std::string& model) const {
  return keys::inference_reply(options_.ns, options_.rank, model);
}

bool InferenceClient::worker_alive() { return client_.exists(heartbeat_); }

InferenceResult InferenceClient::run(const std::string& model, const TensorHeader& inputs_header,
                                     const void* inputs, void* outputs,
                                     std::size_t capacity_bytes) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(
                  std::chrono::duration<double>(options_.timeout_s));
  if (!valid_model_name(model)) {
    throw ConfigError("inference: model name '" + model +
                      "' is not valid (1-200 characters, no '{', '}', ':' or spaces)");
  }
  if (inputs_header.shape.size() != 2) {
    throw TensorFormatError("inference '" + model + "': inputs must be [points, features], got " +
                            inputs_header.describe());
  }
  const std::string reply = reply_key(model);
  const std::uint64_t id = next_request_++;

  // Round trip 1: the request.
  client_.push_message(queue_, request_envelope(id, reply, model, options_.timeout_s),
                       inputs_header, inputs);

  // Round trip 2 (more only after a timed-out earlier call left its reply behind, or while
  // waiting longer than heartbeat_check_s): this rank's reply.
  Client::Message message;
  std::uint8_t status = reply_ok;
  std::uint64_t version = 0;
  const auto tensor_follows = [&](const std::string& envelope) {
    if (std::memcmp(envelope.data(), kReplyMagic, 4) != 0 ||
        static_cast<std::uint8_t>(envelope[4]) != kEnvelopeVersion) {
      throw TensorFormatError("inference '" + model + "': list '" + reply +
                              "' holds something that is not a reply envelope");
    }
    status = static_cast<std::uint8_t>(envelope[5]);
    version = get_le<std::uint64_t>(envelope, 8);
    return status == reply_ok && get_le<std::uint64_t>(envelope, 16) == id;
  };
  const auto allocate = [&](const TensorHeader& header) -> void* {
    if (header.dtype != inputs_header.dtype) {
      throw TensorFormatError("inference '" + model + "': the predictions are " +
                              header.describe() + ", the inputs " + inputs_header.describe());
    }
    if (header.data_bytes() > capacity_bytes) {
      throw TensorFormatError("inference '" + model + "': the predictions " + header.describe() +
                              " (" + std::to_string(header.data_bytes()) +
                              " bytes) do not fit the output buffer of " +
                              std::to_string(capacity_bytes) + " bytes");
    }
    return outputs;
  };
  for (;;) {
    const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    if (left <= 0) {
      throw TimeoutError("inference '" + model + "': no reply within " +
                         std::to_string(options_.timeout_s) + " s from the model worker on '" +
                         queue_ + "' (the worker is alive but busy; raise inferenceTimeout or "
                         "add workers)");
    }
    const double wait = std::max(1e-3, std::min(left, options_.heartbeat_check_s));
    if (!client_.pop_message(reply, wait, kEnvelopeBytes, tensor_follows, allocate, message)) {
      if (!worker_alive()) {
        throw WorkerUnavailableError(
            "inference '" + model + "': no model worker serves '" + queue_ + "' (heartbeat '" +
            heartbeat_ + "' missing); start one with `nekrs-ml serve` or check its log");
      }
      continue;
    }
    if (get_le<std::uint64_t>(message.envelope, 16) != id) continue; // reply to an older call
    break;
  }
  if (status != reply_ok) {
    const std::string text = "inference '" + model + "': the model worker refused the request: " +
                             message.text;
    if (status == reply_unknown_model) throw KeyNotFoundError(text);
    if (status == reply_bad_input) throw TensorFormatError(text);
    throw ModelError(text);
  }
  if (!message.has_tensor) throw ModelError("inference '" + model + "': the reply has no tensor");
  InferenceResult result;
  result.header = std::move(message.header);
  result.version = version;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

} // namespace nekrs_ml
