// nekrs_ml::Client — the C++ client of the orchestrator (Redis / Redis Cluster) on hiredis.
//
// Addresses are "host:port", "[v6addr]:port" or "unix:/path/to/socket", exactly as printed by
// `nekrs-ml db start`. With cluster = true the addresses are seeds: the client reads the slot
// map from any of them and routes every key to its shard, following MOVED/ASK redirects.
// Every call has a timeout; errors are exceptions (errors.hpp) naming the key and quoting the
// server. A Client is not thread-safe: use one per thread.
#pragma once

#include "nekrs_ml/codec.hpp"
#include "nekrs_ml/errors.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace nekrs_ml {

struct ClientOptions {
  std::vector<std::string> addresses;
  std::string password;          // empty = no AUTH
  bool cluster = false;
  double timeout_s = 10.0;        // per call (send + reply)
  double connect_timeout_s = 5.0; // per connection attempt
};

// A tensor to send: header + pointer to caller-owned contiguous data (not copied).
struct TensorView {
  std::string key;
  TensorHeader header;
  const void* data = nullptr;
};

// One command of a pipeline. Each argument is made of pieces of the caller's memory, sent as
// they are (no copy) and valid during the call; `key` routes the command in cluster mode.
struct Command {
  using Argument = std::vector<std::string_view>;
  std::string key;
  std::vector<Argument> args;

  // A command of whole-string arguments (the strings must outlive the call).
  static Command of(const std::string& key, const std::vector<std::string_view>& args);
};

// A reply of a pipelined command, error replies included (they are not thrown).
struct CommandReply {
  enum class Type { integer, text, nil, array, error };
  Type type = Type::nil;
  long long integer = 0;
  std::string text; // a bulk/status string, or the text of an error
  std::vector<CommandReply> elements;

  bool is_error() const { return type == Type::error; }
};

class Client {
public:
  explicit Client(const ClientOptions& options);
  Client(const std::vector<std::string>& addresses, const std::string& password = "",
         bool cluster = false);
  // Reads NEKRS_ML_ADDRESSES, NEKRS_ML_PASSWORD_FILE, NEKRS_ML_MODE (see docs/protocol.md);
  // in colocated mode picks this node's server. Throws ConfigError naming the variable.
  static ClientOptions options_from_env();
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;

  // --- tensors ---------------------------------------------------------------------------
  // Stores header + data under `key` in one SET; `data` is sent without an intermediate copy.
  void put_tensor(const std::string& key, const TensorHeader& header, const void* data);
  template <typename T>
  void put_tensor(const std::string& key, const std::vector<std::uint64_t>& shape, const T* data) {
    put_tensor(key, TensorHeader{dtype_of<T>(), shape}, data);
  }
  // Pipelined: all puts are sent before any reply is read (one round trip per shard).
  void put_tensors(const std::vector<TensorView>& tensors);

  // Reads a tensor. `allocate` receives the decoded header and returns where its
  // header.data_bytes() bytes go; the data is received straight into that buffer.
  // Throws KeyNotFoundError if the key does not exist, TensorFormatError if it is not a tensor.
  TensorHeader get_tensor(const std::string& key,
                          const std::function<void*(const TensorHeader&)>& allocate);
  // Pipelined multi-get: every GET is sent before any reply is read (one round trip per
  // shard); `allocate(i, header)` gives where the data of keys[i] goes. Throws the first error
  // (KeyNotFoundError, TensorFormatError) once every reply has been read.
  std::vector<TensorHeader> get_tensors(
      const std::vector<std::string>& keys,
      const std::function<void*(std::size_t, const TensorHeader&)>& allocate);
  // Reads into a caller-owned buffer of `capacity_bytes`; throws TensorFormatError if the
  // stored tensor does not fit or (when `expected_dtype` is given) has another dtype.
  TensorHeader get_tensor(const std::string& key, void* out, std::size_t capacity_bytes);
  TensorHeader get_tensor(const std::string& key, void* out, std::size_t capacity_bytes,
                          DType expected_dtype);

  // --- keys -------------------------------------------------------------------------------
  bool exists(const std::string& key);
  // Waits until the key exists, checking every `interval_s`; returns false after `timeout_s`.
  bool poll_key(const std::string& key, double timeout_s, double interval_s = 0.005);
  // Returns the number of keys removed (0 or 1).
  long long delete_key(const std::string& key);

  // --- small values and counters ----------------------------------------------------------
  void set_string(const std::string& key, const std::string& value);
  // Returns false when the key does not exist.
  bool get_string(const std::string& key, std::string& value);
  long long increment(const std::string& key, long long by = 1);

  // --- lists -------------------------------------------------------------------------------
  long long list_push(const std::string& key, const std::string& value); // RPUSH, returns length
  long long list_length(const std::string& key);
  std::vector<std::string> list_range(const std::string& key, long long start, long long stop);
  void list_trim(const std::string& key, long long start, long long stop);

  // --- messages (docs/protocol.md, "Inference requests") ---------------------------------
  // A list element made of a small envelope followed by a tensor or a text.
  struct Message {
    std::string envelope;
    bool has_tensor = false;
    TensorHeader header; // when has_tensor: the tensor, received through `allocate`
    std::string text;    // otherwise: the rest of the element
  };
  // RPUSH key <envelope + tensor>; the tensor data is sent from the caller's memory without a
  // copy. Returns the length of the list.
  long long push_message(const std::string& key, const std::string& envelope,
                         const TensorHeader& header, const void* data);
  // BLPOP key, waiting at most `wait_s` seconds on the server (on top of the call timeout).
  // Returns false when nothing arrived. The first `envelope_bytes` bytes of the element go to
  // message.envelope; when `tensor_follows(envelope)` the rest is a tensor received straight
  // into the buffer `allocate` returns, otherwise it is copied to message.text.
  bool pop_message(const std::string& key, double wait_s, std::size_t envelope_bytes,
                   const std::function<bool(const std::string& envelope)>& tensor_follows,
                   const std::function<void*(const TensorHeader&)>& allocate, Message& message);

  // --- pipelines ---------------------------------------------------------------------------
  // Sends every command before reading any reply: one round trip per server. Commands that go
  // to the same server keep their order, so a MULTI ... EXEC group whose keys share one hash
  // slot runs atomically. Returns one reply per command, in order; error replies are returned,
  // not thrown (I/O errors and timeouts do throw). Redirects are not followed: a MOVED reply
  // refreshes the slot map and comes back as an error, for the caller to retry what is safe.
  std::vector<CommandReply> pipeline(const std::vector<Command>& commands);

  // --- raw commands -----------------------------------------------------------------------
  // Runs one command routed by `key` (or to any node if key is empty). Returns an integer
  // reply as its decimal text, a status/bulk reply as is, nil as an empty optional-like "",
  // and throws ServerError on an error reply. For arrays use list_range-style helpers.
  std::string command(const std::vector<std::string>& argv, const std::string& key = "");

  const ClientOptions& options() const;
  double timeout() const;
  void set_timeout(double timeout_s);

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Redis Cluster hash slot of a key (CRC16/XMODEM of the hash tag, mod 16384).
unsigned key_slot(const std::string& key);

} // namespace nekrs_ml
