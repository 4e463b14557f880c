#include "connection.hpp"

#include "nekrs_ml/errors.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <charconv>

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

namespace nekrs_ml {

namespace {

constexpr std::size_t kMaxLineBytes = 64 * 1024;
// One recv of a reply line takes up to this much: the line and the start of what follows (a
// small value whole, a tensor's header). Larger data is read straight into the caller's memory.
constexpr std::size_t kReadAheadBytes = 16 * 1024;

timeval to_timeval(double seconds) {
  // At least 1 us: a zero socket timeout would mean "wait forever".
  const long long microseconds = std::max(1LL, std::llround(seconds * 1e6));
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(microseconds / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(microseconds % 1000000);
  return tv;
}

bool is_timeout(int error_number) { return error_number == EAGAIN || error_number == EWOULDBLOCK; }

// Appended to every connection failure: the usual cause is a server that is not running.
constexpr char kConnectionHint[] =
    "; check that the server is running (`nekrs-ml db start`) and the address is right";

std::string format_seconds(double seconds) {
  char text[64];
  const auto result = std::to_chars(text, text + sizeof text, seconds);
  return std::string(text, result.ptr) + " s";
}

} // namespace

std::string Op::prefix() const {
  if (name.empty()) return {};
  std::string text(name);
  if (!key.empty()) text += " '" + std::string(key) + "'";
  return text + ": ";
}

Connection::Connection(std::string address, const ClientOptions& options)
    : address_(std::move(address)), parsed_(parse_address(address_)), options_(options) {}

Connection::~Connection() { drop(); }

void Connection::drop() {
  if (context_ != nullptr) redisFree(context_);
  context_ = nullptr;
  ahead_begin_ = ahead_end_ = 0;
}

void Connection::connect(const Op& op) {
  if (context_ != nullptr) return;
  const timeval tv = to_timeval(options_.connect_timeout_s);
  redisContext* context = parsed_.is_unix
                              ? redisConnectUnixWithTimeout(parsed_.path.c_str(), tv)
                              : redisConnectWithTimeout(parsed_.host.c_str(), parsed_.port, tv);
  if (context == nullptr) {
    throw ConnectionError(op.prefix() + "cannot connect to " + address_ + ": out of memory");
  }
  if (context->err != 0) {
    const std::string reason = context->errstr;
    redisFree(context);
    throw ConnectionError(op.prefix() + "cannot connect to " + address_ + ": " + reason +
                          kConnectionHint);
  }
  context_ = context;
  apply_timeout();
  if (!options_.password.empty()) authenticate(op);
}

void Connection::apply_timeout(double extra_wait_s) {
  if (context_ != nullptr &&
      redisSetTimeout(context_, to_timeval(options_.timeout_s + extra_wait_s)) != REDIS_OK) {
    const std::string reason = context_->errstr;
    drop();
    throw ConnectionError("cannot set the timeout on the connection to " + address_ + ": " +
                          reason);
  }
}

void Connection::authenticate(const Op& op) {
  // The two-argument form: a server with a password checks it; a --smartredis server, whose
  // default user needs none (SmartRedis sends none), accepts it as well.
  Reply reply = command({"AUTH", "default", options_.password}, op);
  if (reply->type == REDIS_REPLY_ERROR) {
    const std::string reason(reply->str, reply->len);
    drop();
    throw AuthenticationError(op.prefix() + "server at " + address_ +
                              " refused the password: " + reason);
  }
}

Reply Connection::command(const std::vector<std::string>& argv, const Op& op) {
  connect(op);
  hand_ahead_to_hiredis(op);
  std::vector<const char*> args;
  std::vector<std::size_t> lengths;
  for (const std::string& arg : argv) {
    args.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  void* reply =
      redisCommandArgv(context_, static_cast<int>(args.size()), args.data(), lengths.data());
  if (reply == nullptr) fail_hiredis(op);
  return Reply(static_cast<redisReply*>(reply));
}

Reply Connection::read_reply(const Op& op) {
  connect(op);
  hand_ahead_to_hiredis(op);
  void* reply = nullptr;
  if (redisGetReply(context_, &reply) != REDIS_OK || reply == nullptr) fail_hiredis(op);
  return Reply(static_cast<redisReply*>(reply));
}

void Connection::prepare_raw(const Op& op) {
  connect(op);
  // hiredis 0.14 keeps unparsed input in reader->buf[pos, len) and unsent output in the sds
  // string obuf (commands never start with '\0', so a non-empty one has obuf[0] != 0). Its API
  // has no call that says whether these are empty, and the raw sends and reads of tensors
  // (tensor_io.cpp, no copy of the data) need a connection with nothing buffered.
  const redisReader* reader = context_->reader;
  const bool buffered =
      reader->len > reader->pos || context_->obuf[0] != '\0' || ahead_bytes() > 0;
  if (buffered) {
    drop();
    connect(op);
  }
}

void Connection::send(iovec* iov, std::size_t count, const Op& op) {
  while (count > 0) {
    msghdr message{};
    message.msg_iov = iov;
    message.msg_iovlen = std::min<std::size_t>(count, IOV_MAX);
    // sendmsg is writev with flags: MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE.
    const ssize_t sent = ::sendmsg(context_->fd, &message, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      fail_io(op, errno, true);
    }
    std::size_t left = static_cast<std::size_t>(sent);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (left > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
}

void Connection::hand_ahead_to_hiredis(const Op& op) {
  if (ahead_bytes() == 0) return;
  if (redisReaderFeed(context_->reader, ahead_.data() + ahead_begin_, ahead_bytes()) != REDIS_OK) {
    drop();
    throw ConnectionError(op.prefix() + "connection to " + address_ +
                          " failed: cannot buffer a reply (out of memory)");
  }
  ahead_begin_ = ahead_end_ = 0;
}

void Connection::receive_ahead(const Op& op) {
  if (ahead_.empty()) ahead_.resize(kReadAheadBytes);
  ahead_begin_ = ahead_end_ = 0;
  for (;;) {
    const ssize_t received = ::recv(context_->fd, ahead_.data(), ahead_.size(), 0);
    if (received > 0) {
      ahead_end_ = static_cast<std::size_t>(received);
      return;
    }
    if (received == 0) fail_closed(op);
    if (errno != EINTR) fail_io(op, errno, false);
  }
}

std::size_t Connection::read_some(void* out, std::size_t size, const Op& op) {
  if (ahead_bytes() > 0) {
    const std::size_t taken = std::min(size, ahead_bytes());
    std::memcpy(out, ahead_.data() + ahead_begin_, taken);
    ahead_begin_ += taken;
    return taken;
  }
  for (;;) {
    const ssize_t received = ::recv(context_->fd, out, size, 0);
    if (received > 0) return static_cast<std::size_t>(received);
    if (received == 0) fail_closed(op);
    if (errno != EINTR) fail_io(op, errno, false);
  }
}

void Connection::read_exact(void* out, std::size_t size, const Op& op) {
  auto* bytes = static_cast<char*>(out);
  while (size > 0) {
    const std::size_t received = read_some(bytes, size, op);
    bytes += received;
    size -= received;
  }
}

std::string Connection::read_line(const Op& op) {
  std::string line;
  for (;;) {
    if (ahead_bytes() == 0) receive_ahead(op);
    const char* begin = ahead_.data() + ahead_begin_;
    const char* newline = static_cast<const char*>(std::memchr(begin, '\n', ahead_bytes()));
    const std::size_t take =
        newline ? static_cast<std::size_t>(newline - begin) + 1 : ahead_bytes();
    line.append(begin, take);
    ahead_begin_ += take;
    if (newline != nullptr) break;
    if (line.size() > kMaxLineBytes) {
      drop();
      throw ConnectionError(op.prefix() + "protocol error: reply line from " + address_ +
                            " is longer than " + std::to_string(kMaxLineBytes) + " bytes");
    }
  }
  if (line.size() < 2 || line[line.size() - 2] != '\r') {
    drop();
    throw ConnectionError(op.prefix() + "protocol error: reply line from " + address_ +
                          " does not end in CRLF");
  }
  line.resize(line.size() - 2);
  return line;
}

void Connection::skip(std::size_t size) noexcept {
  char buffer[16 * 1024];
  try {
    while (size > 0 && context_ != nullptr) {
      size -= read_some(buffer, std::min(size, sizeof buffer), Op{});
    }
  } catch (...) {
    drop(); // never left mid-reply; the caller's own error is the one to report
  }
}

void Connection::fail_hiredis(const Op& op) {
  const int error_number = errno; // hiredis leaves errno of the failed read/write in place
  const int error_kind = context_->err;
  const std::string reason = context_->errstr;
  if (error_kind == REDIS_ERR_IO) fail_io(op, error_number, false);
  drop();
  if (error_kind == REDIS_ERR_EOF) fail_closed(op);
  throw ConnectionError(op.prefix() + "connection to " + address_ + " failed: " + reason +
                        kConnectionHint);
}

void Connection::fail_io(const Op& op, int error_number, bool sending) {
  drop();
  if (is_timeout(error_number)) {
    throw TimeoutError(op.prefix() + (sending ? "could not send to " : "no reply from ") +
                       address_ + " within the timeout of " + format_seconds(options_.timeout_s));
  }
  throw ConnectionError(op.prefix() + "connection to " + address_ +
                        " failed: " + std::strerror(error_number) + kConnectionHint);
}

void Connection::fail_closed(const Op& op) {
  drop();
  throw ConnectionError(op.prefix() + "server " + address_ + " closed the connection" +
                        kConnectionHint);
}

} // namespace nekrs_ml
