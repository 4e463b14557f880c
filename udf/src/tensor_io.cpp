#include "tensor_io.hpp"

#include "codec_detail.hpp"
#include "nekrs_ml/errors.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>

namespace nekrs_ml {

namespace {

char kCrlf[] = "\r\n";

std::string bulk(const std::string& text) {
  return "$" + std::to_string(text.size()) + "\r\n" + text + "\r\n";
}

[[noreturn]] void protocol_error(Connection& connection, const Op& op, const std::string& what) {
  connection.drop();
  throw ConnectionError(op.prefix() + "protocol error from " + connection.address() + ": " + what);
}

// Length of the bulk string announced by "$<n>", or -1 for the nil reply "$-1".
long long bulk_length(Connection& connection, const std::string& line, const Op& op) {
  char* end = nullptr;
  const long long length = std::strtoll(line.c_str() + 1, &end, 10);
  if (line.size() < 2 || *end != '\0' || length < -1) {
    protocol_error(connection, op, "unexpected reply line '" + line + "'");
  }
  return length;
}

// Receives a value of `value_bytes` bytes (followed by CRLF) as a tensor.
TensorHeader receive_value(Connection& connection, std::size_t value_bytes, const std::string& key,
                           const Allocate& allocate, const Op& op) {
  const std::size_t reply_bytes = value_bytes + 2; // the value and its CRLF
  // The header arrives here; whatever data comes with it is copied out below.
  std::uint8_t buffer[4096];
  const std::size_t buffer_limit = std::min(sizeof buffer, reply_bytes);
  std::size_t have = 0;
  try {
    while (have < std::min(value_bytes, header_bytes_needed(buffer, have))) {
      have += connection.read_some(buffer + have, buffer_limit - have, op);
    }
    TensorHeader header = decode_header(buffer, std::min(have, value_bytes), key);
    check_value_bytes(header, value_bytes, key);
    const std::size_t data_bytes = header.data_bytes();
    auto* out = static_cast<std::uint8_t*>(allocate(header));
    if (out == nullptr && data_bytes > 0) {
      throw ConfigError(op.prefix() + "no buffer was given for " + header.describe());
    }
    const std::size_t early_bytes = std::min(have - header.header_bytes(), data_bytes);
    if (early_bytes > 0) std::memcpy(out, buffer + header.header_bytes(), early_bytes);
    connection.read_exact(out + early_bytes, data_bytes - early_bytes, op);

    const std::size_t early_crlf = have - header.header_bytes() - early_bytes;
    char crlf[2];
    std::memcpy(crlf, buffer + have - early_crlf, early_crlf);
    connection.read_exact(crlf + early_crlf, 2 - early_crlf, op);
    if (crlf[0] != '\r' || crlf[1] != '\n')
      protocol_error(connection, op, "value not followed by CRLF");
    return header;
  } catch (...) {
    connection.skip(reply_bytes - have); // a no-op when the connection was dropped
    throw;
  }
}

} // namespace

SetCommand::SetCommand(const std::string& key, const TensorHeader& header, const void* data,
                       const Op& op, const char* verb, std::string prelude)
    : data_(data) {
  try {
    header_bytes_ = encode_header(header, header_);
    data_bytes_ = header.data_bytes();
  } catch (const TensorFormatError& error) {
    throw TensorFormatError(op.prefix() + error.what());
  }
  if (data == nullptr && data_bytes_ > 0) {
    throw ConfigError(op.prefix() + "no data given for " + header.describe());
  }
  prefix_ = "*3\r\n" + bulk(verb) + bulk(key) + "$" +
            std::to_string(prelude.size() + header_bytes_ + data_bytes_) + "\r\n" + prelude;
}

void SetCommand::append_to(std::vector<iovec>& pieces) const {
  pieces.push_back({const_cast<char*>(prefix_.data()), prefix_.size()});
  pieces.push_back({const_cast<std::uint8_t*>(header_), header_bytes_});
  pieces.push_back({const_cast<void*>(data_), data_bytes_});
  pieces.push_back({kCrlf, 2});
}

void send_set(Connection& connection, const SetCommand& set, const Op& op) {
  std::vector<iovec> pieces;
  set.append_to(pieces);
  connection.send(pieces.data(), pieces.size(), op);
}

void send_get(Connection& connection, const std::string& key, const Op& op) {
  std::string command = "*2\r\n$3\r\nGET\r\n" + bulk(key);
  iovec piece{command.data(), command.size()};
  connection.send(&piece, 1, op);
}

void send_blpop(Connection& connection, const std::string& key, double wait_s, const Op& op) {
  char digits[64];
  const std::string wait(digits, std::to_chars(digits, digits + sizeof digits, wait_s,
                                               std::chars_format::fixed, 6).ptr);
  std::string command = "*3\r\n$5\r\nBLPOP\r\n" + bulk(key) + bulk(wait);
  iovec piece{command.data(), command.size()};
  connection.send(&piece, 1, op);
}

GetResult receive_tensor(Connection& connection, const std::string& key, const Allocate& allocate,
                         const Op& op) {
  const std::string line = connection.read_line(op);
  if (!line.empty() && line.front() == '-') {
    const std::string error = line.substr(1);
    if (error.rfind("WRONGTYPE", 0) == 0) {
      throw TensorFormatError(op.prefix() + "the value is not a tensor (" + error + ")");
    }
    return {error, {}};
  }
  if (line.empty() || line.front() != '$') {
    protocol_error(connection, op, "unexpected reply line '" + line + "' to GET");
  }
  const long long length = bulk_length(connection, line, op);
  if (length < 0) throw KeyNotFoundError("key '" + key + "' does not exist");
  return {std::nullopt,
          receive_value(connection, static_cast<std::size_t>(length), key, allocate, op)};
}

namespace {

// Reads "$<n>\r\n<n bytes>\r\n" into a string (small values: keys, error texts).
std::string read_bulk(Connection& connection, const Op& op) {
  const std::string line = connection.read_line(op);
  if (line.empty() || line.front() != '$') {
    protocol_error(connection, op, "unexpected reply line '" + line + "' (expected a bulk string)");
  }
  const long long length = bulk_length(connection, line, op);
  if (length < 0) protocol_error(connection, op, "nil inside an array reply");
  std::string text(static_cast<std::size_t>(length) + 2, '\0');
  connection.read_exact(text.data(), text.size(), op);
  text.resize(static_cast<std::size_t>(length));
  return text;
}

} // namespace

PopResult receive_message(Connection& connection, const std::string& key,
                          std::size_t envelope_bytes,
                          const std::function<bool(const std::string&)>& tensor_follows,
                          const Allocate& allocate, const Op& op) {
  const std::string line = connection.read_line(op);
  PopResult result;
  if (!line.empty() && line.front() == '-') {
    result.error = line.substr(1);
    return result;
  }
  if (line == "*-1") return result; // the wait ended without an element
  if (line != "*2") protocol_error(connection, op, "unexpected reply line '" + line + "' to BLPOP");
  read_bulk(connection, op); // the name of the list
  const std::string value_line = connection.read_line(op);
  if (value_line.empty() || value_line.front() != '$') {
    protocol_error(connection, op, "unexpected reply line '" + value_line + "' to BLPOP");
  }
  const long long length = bulk_length(connection, value_line, op);
  if (length < static_cast<long long>(envelope_bytes)) {
    if (length >= 0) connection.skip(static_cast<std::size_t>(length) + 2);
    throw TensorFormatError(op.prefix() + "list '" + key + "' holds an element of " +
                            std::to_string(length) + " bytes, shorter than a message envelope");
  }
  const std::size_t rest = static_cast<std::size_t>(length) - envelope_bytes;
  result.popped = true;
  result.envelope.assign(envelope_bytes, '\0');
  connection.read_exact(result.envelope.data(), envelope_bytes, op);
  bool tensor = false;
  try {
    tensor = tensor_follows(result.envelope);
  } catch (...) {
    connection.skip(rest + 2);
    throw;
  }
  if (tensor) {
    result.has_tensor = true;
    result.header = receive_value(connection, rest, key, allocate, op);
  } else {
    result.text.assign(rest + 2, '\0');
    connection.read_exact(result.text.data(), result.text.size(), op);
    result.text.resize(rest);
  }
  return result;
}

} // namespace nekrs_ml
