// One connection to one server: lazy connect + AUTH through hiredis, hiredis commands, and raw
// socket I/O for tensors (sent from and received into the caller's memory without a copy).
#pragma once

#include "address.hpp"
#include "nekrs_ml/client.hpp"

#include <hiredis.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct iovec;

namespace nekrs_ml {

// What a call is doing, for error messages: "get_tensor 'key': ...".
struct Op {
  std::string_view name;
  std::string_view key;

  std::string prefix() const; // empty when name is empty
};

struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

class Connection {
public:
  // `options` (password, timeouts) must outlive the connection.
  Connection(std::string address, const ClientOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const std::string& address() const { return address_; }
  const Address& parsed_address() const { return parsed_; }

  // Connects and authenticates unless already connected. Throws ConnectionError or
  // AuthenticationError naming the address.
  void connect(const Op& op);
  bool connected() const { return context_ != nullptr; }
  // Closes the socket; the next call reconnects. Used whenever the reply stream is in doubt.
  void drop();
  // Applies options.timeout_s (plus `extra_wait_s`, for commands that block on the server, such
  // as BLPOP) to the open socket.
  void apply_timeout(double extra_wait_s = 0.0);

  // Sends a command through hiredis and returns its reply (error replies included). I/O
  // failures drop the connection and throw TimeoutError or ConnectionError.
  Reply command(const std::vector<std::string>& argv, const Op& op);
  // Reads the next reply through hiredis (after raw sends).
  Reply read_reply(const Op& op);

  // --- raw socket I/O; call prepare_raw first -----------------------------------------------
  // Connects, and makes sure hiredis holds no buffered input or output, so that the socket
  // can be written and read directly.
  void prepare_raw(const Op& op);
  // Sends all bytes of iov[0..count) (advancing iov over partial writes).
  void send(iovec* iov, std::size_t count, const Op& op);
  // Reads one reply line up to and including "\r\n"; returns it without the "\r\n". It
  // receives ahead (one recv for the line and what follows it, up to kReadAheadBytes): the
  // bytes past the line are the next raw reads' first, or are handed to hiredis's reader by
  // command() and read_reply().
  std::string read_line(const Op& op);
  // Reads between 1 and `size` bytes: those received ahead first, else straight from the socket
  // into `out`.
  std::size_t read_some(void* out, std::size_t size, const Op& op);
  void read_exact(void* out, std::size_t size, const Op& op);
  // Consumes the rest of a reply after an aborted read; drops the connection if that fails,
  // so it is never left in the middle of a reply.
  void skip(std::size_t size) noexcept;

private:
  void authenticate(const Op& op);
  [[noreturn]] void fail_hiredis(const Op& op);
  [[noreturn]] void fail_io(const Op& op, int error_number, bool sending);
  [[noreturn]] void fail_closed(const Op& op);
  // One recv into the empty read-ahead buffer.
  void receive_ahead(const Op& op);
  // Appends the bytes received ahead to hiredis's input buffer: it parses them before it reads
  // the socket again.
  void hand_ahead_to_hiredis(const Op& op);
  std::size_t ahead_bytes() const { return ahead_end_ - ahead_begin_; }

  std::string address_;
  Address parsed_;
  const ClientOptions& options_;
  redisContext* context_ = nullptr;
  // Received, not yet consumed: ahead_[ahead_begin_, ahead_end_).
  std::vector<char> ahead_;
  std::size_t ahead_begin_ = 0;
  std::size_t ahead_end_ = 0;
};

} // namespace nekrs_ml
