// Tensors on the wire without intermediate copies: SET is sent with writev-style scatter I/O
// straight from the caller's array; GET replies are parsed off the socket and the data is
// received straight into the caller's buffer.
#pragma once

#include "connection.hpp"
#include "nekrs_ml/codec.hpp"

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace nekrs_ml {

using Allocate = std::function<void*(const TensorHeader&)>;

// The RESP form of "<VERB> key <prelude + header + data>" (SET, or RPUSH of a message),
// pointing at the caller's data.
class SetCommand {
public:
  // Throws TensorFormatError (naming the key) for an invalid header.
  SetCommand(const std::string& key, const TensorHeader& header, const void* data, const Op& op,
             const char* verb = "SET", std::string prelude = "");
  // Appends the pieces of the command; valid while this object stays where it is.
  void append_to(std::vector<iovec>& pieces) const;

private:
  std::string prefix_; // "*3\r\n$3\r\nSET\r\n$<klen>\r\n<key>\r\n$<vlen>\r\n" + prelude
  std::uint8_t header_[kMaxHeaderBytes];
  std::size_t header_bytes_ = 0;
  const void* data_ = nullptr;
  std::size_t data_bytes_ = 0;
};

void send_set(Connection& connection, const SetCommand& set, const Op& op);
void send_get(Connection& connection, const std::string& key, const Op& op);
// "BLPOP key wait_s", the wait written without the locale (to_chars, 6 decimals).
void send_blpop(Connection& connection, const std::string& key, double wait_s, const Op& op);

// Reads the reply to send_get. Returns the header once the data is in the buffer given by
// `allocate`, or the text of an error reply (e.g. a redirect) to be handled by the caller.
// Throws KeyNotFoundError, and TensorFormatError when the value is not a tensor; the
// connection stays in step with the server whatever is thrown.
struct GetResult {
  std::optional<std::string> error;
  TensorHeader header;
};
GetResult receive_tensor(Connection& connection, const std::string& key, const Allocate& allocate,
                         const Op& op);

// Reads the reply to "BLPOP key wait" whose element is a message: `envelope_bytes` bytes of
// envelope, then either a tensor (when `tensor_follows(envelope)`; received through
// `allocate`) or a text. `popped` is false when the wait ended with nothing.
struct PopResult {
  std::optional<std::string> error;
  bool popped = false;
  std::string envelope;
  bool has_tensor = false;
  TensorHeader header;
  std::string text;
};
PopResult receive_message(Connection& connection, const std::string& key,
                          std::size_t envelope_bytes,
                          const std::function<bool(const std::string&)>& tensor_follows,
                          const Allocate& allocate, const Op& op);

} // namespace nekrs_ml
