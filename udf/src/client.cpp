// nekrs_ml::Client: routing (single server or Redis Cluster), redirects, retries, and the
// public operations. Socket work lives in connection.cpp and tensor_io.cpp.
#include "nekrs_ml/client.hpp"

#include "connection.hpp"
#include "slots.hpp"
#include "tensor_io.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <charconv>
#include <thread>

namespace nekrs_ml {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxRedirects = 5;
constexpr auto kRetryPause = std::chrono::milliseconds(20);

Clock::duration seconds(double value) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(value));
}

bool starts_with(const std::string& text, const char* prefix) { return text.rfind(prefix, 0) == 0; }

struct Redirect {
  enum Kind { none, moved, ask } kind = none;
  unsigned slot = 0;
  std::string address;
};

// "MOVED 3999 127.0.0.1:6381" or "ASK ...". IPv6 hosts come without brackets; an empty host
// means the host of the node that replied.
Redirect parse_redirect(const std::string& error, const Address& replied_from) {
  const auto first_space = error.find(' ');
  const auto second_space = error.find(' ', first_space + 1);
  if (first_space == std::string::npos || second_space == std::string::npos) return {};
  const std::string kind = error.substr(0, first_space);
  std::string endpoint = error.substr(second_space + 1);
  endpoint.erase(std::min(endpoint.find(' '), endpoint.size()));
  long slot = -1;
  const char* slot_end = error.data() + second_space;
  if (std::from_chars(error.data() + first_space + 1, slot_end, slot).ptr != slot_end) return {};
  const auto colon = endpoint.rfind(':');
  if ((kind != "MOVED" && kind != "ASK") || slot < 0 || slot >= static_cast<long>(kSlotCount) ||
      colon == std::string::npos) {
    return {};
  }
  std::string host = endpoint.substr(0, colon);
  if (host.empty()) host = replied_from.host;
  return {kind == "MOVED" ? Redirect::moved : Redirect::ask, static_cast<unsigned>(slot),
          format_tcp_address(host, std::atoi(endpoint.c_str() + colon + 1))};
}

// The cluster is reconfiguring or the server is loading its data: worth trying again shortly.
bool is_transient(const std::string& error) {
  return starts_with(error, "TRYAGAIN") || starts_with(error, "CLUSTERDOWN") ||
         starts_with(error, "LOADING");
}

std::exception_ptr reply_error(const Op& op, const std::string& address, const std::string& error,
                               bool cluster) {
  if (starts_with(error, "NOAUTH")) {
    return std::make_exception_ptr(
        AuthenticationError(op.prefix() + "server at " + address +
                            " requires a password; pass password= or set NEKRS_ML_PASSWORD_FILE"));
  }
  std::string hint;
  if (starts_with(error, "MOVED ") || starts_with(error, "ASK ")) {
    hint = cluster ? " (still redirected after " + std::to_string(kMaxRedirects) + " redirects)"
                   : " (the server is a cluster node: connect in cluster mode)";
  }
  return std::make_exception_ptr(
      ServerError(op.prefix() + "server error: " + error + " (server " + address + ")" + hint));
}

std::optional<std::string> error_of(const redisReply& reply) {
  if (reply.type != REDIS_REPLY_ERROR) return std::nullopt;
  return std::string(reply.str, reply.len);
}

std::string text_of(const redisReply& reply) { return std::string(reply.str, reply.len); }

[[noreturn]] void unexpected_reply(const Op& op, const char* expected) {
  throw ServerError(op.prefix() + "unexpected reply from the server (expected " + expected + ")");
}

long long integer_of(const Reply& reply, const Op& op) {
  if (reply->type != REDIS_REPLY_INTEGER) unexpected_reply(op, "an integer");
  return reply->integer;
}

void check_seconds(const char* what, double value) {
  // The socket timeouts are microseconds in a 64-bit count: far beyond any useful wait.
  constexpr double kMaxSeconds = 1e6;
  if (!(value > 0) || !std::isfinite(value) || value > kMaxSeconds) {
    throw ConfigError(std::string(what) + " must be a positive number of seconds of at most " +
                      "1e6 (about 11.6 days), got " + std::to_string(value));
  }
}

void validate(const ClientOptions& options) {
  if (options.addresses.empty()) {
    throw ConfigError("no server address given; pass the addresses printed by `nekrs-ml db start`");
  }
  for (const std::string& address : options.addresses) parse_address(address);
  check_seconds("timeout", options.timeout_s);
  check_seconds("connect_timeout", options.connect_timeout_s);
}

} // namespace

struct Client::Impl {
  explicit Impl(const ClientOptions& client_options);

  Connection& connection(const std::string& address);
  Connection& node_for(std::string_view key);
  void load_slots(const Op& op);
  void follow_moved(const Redirect& redirect, const Op& op);
  void send_asking(Connection& connection, const Op& op);
  bool is_retryable(const std::string& error, const Connection& connection) const;

  // Runs attempt(connection) on the node serving op.key, following MOVED/ASK redirects and
  // retrying transient errors until the timeout. `attempt` returns the text of an error reply,
  // or nothing on success.
  template <typename Attempt> void route(const Op& op, Attempt attempt);
  Reply run(const Op& op, const std::vector<std::string>& argv);

  ClientOptions options;
  std::map<std::string, std::unique_ptr<Connection>> connections;
  SlotMap slots;
};

Client::Impl::Impl(const ClientOptions& client_options) : options(client_options) {
  validate(options);
  // Connect now, so that a wrong address or password shows up where the client is made.
  if (options.cluster) {
    load_slots(Op{});
  } else {
    connection(options.addresses.front()).connect(Op{});
  }
}

Connection& Client::Impl::connection(const std::string& address) {
  auto found = connections.find(address);
  if (found == connections.end()) {
    found = connections.emplace(address, std::make_unique<Connection>(address, options)).first;
  }
  return *found->second;
}

Connection& Client::Impl::node_for(std::string_view key) {
  if (!options.cluster) return connection(options.addresses.front());
  const std::string& owner = slots.owner(slot_of(key));
  // A slot nobody claims yet: any node answers with a redirect or CLUSTERDOWN.
  return connection(owner.empty() ? options.addresses.front() : owner);
}

void Client::Impl::load_slots(const Op& op) {
  std::vector<std::string> candidates = options.addresses;
  for (const auto& entry : connections) {
    if (std::find(candidates.begin(), candidates.end(), entry.first) == candidates.end()) {
      candidates.push_back(entry.first);
    }
  }
  std::exception_ptr failure;
  for (const std::string& address : candidates) {
    try {
      Connection& node = connection(address);
      const Reply reply = node.command({"CLUSTER", "SLOTS"}, op);
      if (const auto error = error_of(*reply)) {
        failure = reply_error(op, address, *error, true);
        continue;
      }
      const Address& parsed = node.parsed_address();
      if (slots.load(*reply, parsed.is_unix ? "127.0.0.1" : parsed.host)) return;
      failure = std::make_exception_ptr(
          ServerError(op.prefix() + "malformed CLUSTER SLOTS reply from " + address));
    } catch (const AuthenticationError&) {
      throw; // every node has the same password: asking another one will not help
    } catch (const Error&) {
      failure = std::current_exception();
    }
  }
  std::rethrow_exception(failure);
}

void Client::Impl::follow_moved(const Redirect& redirect, const Op& op) {
  try {
    load_slots(op);
  } catch (const Error&) {
    // The redirect alone says where this slot lives; the next MOVED refreshes the rest.
  }
  slots.assign(redirect.slot, redirect.address);
}

void Client::Impl::send_asking(Connection& node, const Op& op) {
  const Reply reply = node.command({"ASKING"}, op);
  if (const auto error = error_of(*reply)) {
    std::rethrow_exception(reply_error(op, node.address(), *error, true));
  }
}

bool Client::Impl::is_retryable(const std::string& error, const Connection& node) const {
  return is_transient(error) ||
         (options.cluster && parse_redirect(error, node.parsed_address()).kind != Redirect::none);
}

template <typename Attempt> void Client::Impl::route(const Op& op, Attempt attempt) {
  const Clock::time_point deadline = Clock::now() + seconds(options.timeout_s);
  std::string ask_target; // after ASK: the next attempt goes there, once, preceded by ASKING
  int redirects = 0;
  for (;;) {
    Connection& node = ask_target.empty() ? node_for(op.key) : connection(ask_target);
    if (!ask_target.empty()) send_asking(node, op);
    ask_target.clear();

    const std::optional<std::string> error = attempt(node);
    if (!error) return;
    const Redirect redirect =
        options.cluster ? parse_redirect(*error, node.parsed_address()) : Redirect{};
    if (redirect.kind != Redirect::none && redirects < kMaxRedirects) {
      ++redirects;
      if (redirect.kind == Redirect::moved) {
        follow_moved(redirect, op);
      } else {
        ask_target = redirect.address;
      }
      continue;
    }
    if (is_transient(*error) && Clock::now() < deadline) {
      std::this_thread::sleep_for(kRetryPause);
      continue;
    }
    std::rethrow_exception(reply_error(op, node.address(), *error, options.cluster));
  }
}

Reply Client::Impl::run(const Op& op, const std::vector<std::string>& argv) {
  Reply reply;
  route(op, [&](Connection& node) {
    reply = node.command(argv, op);
    return error_of(*reply);
  });
  return reply;
}

// --- construction ------------------------------------------------------------------------------

Client::Client(const ClientOptions& options) : impl_(std::make_unique<Impl>(options)) {}

Client::Client(const std::vector<std::string>& addresses, const std::string& password, bool cluster)
    : Client(ClientOptions{addresses, password, cluster}) {}

Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

const ClientOptions& Client::options() const { return impl_->options; }

double Client::timeout() const { return impl_->options.timeout_s; }

void Client::set_timeout(double timeout_s) {
  check_seconds("timeout", timeout_s);
  impl_->options.timeout_s = timeout_s;
  for (auto& entry : impl_->connections) entry.second->apply_timeout();
}

// --- tensors -----------------------------------------------------------------------------------

void Client::put_tensor(const std::string& key, const TensorHeader& header, const void* data) {
  const Op op{"put_tensor", key};
  const SetCommand set(key, header, data, op);
  impl_->route(op, [&](Connection& node) {
    node.prepare_raw(op);
    send_set(node, set, op);
    return error_of(*node.read_reply(op));
  });
}

namespace {

// The puts going to one node.
struct Batch {
  Connection* connection;
  std::vector<std::size_t> items;
};

// Connections of these batches owe replies that will not be read: close them.
void drop_batches(std::vector<Batch>& batches, std::size_t first, std::size_t last) {
  for (std::size_t b = first; b < last; ++b) batches[b].connection->drop();
}

} // namespace

void Client::put_tensors(const std::vector<TensorView>& tensors) {
  std::vector<SetCommand> commands;
  commands.reserve(tensors.size());
  std::vector<Batch> batches;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& tensor = tensors[i];
    commands.emplace_back(tensor.key, tensor.header, tensor.data, Op{"put_tensors", tensor.key});
    Connection* node = &impl_->node_for(tensor.key);
    auto batch = std::find_if(batches.begin(), batches.end(),
                              [&](const Batch& b) { return b.connection == node; });
    if (batch == batches.end()) batch = batches.insert(batches.end(), Batch{node, {}});
    batch->items.push_back(i);
  }

  // Send everything before reading any reply: one round trip per node.
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const Op op{"put_tensors", tensors[batches[b].items.front()].key};
    try {
      batches[b].connection->prepare_raw(op);
      std::vector<iovec> pieces;
      for (std::size_t i : batches[b].items) commands[i].append_to(pieces);
      batches[b].connection->send(pieces.data(), pieces.size(), op);
    } catch (...) {
      drop_batches(batches, 0, b);
      throw;
    }
  }

  // Read every reply, so the connections stay in step, before reporting the first error.
  std::exception_ptr first_error;
  std::vector<std::size_t> retries;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    Connection& node = *batches[b].connection;
    for (std::size_t i : batches[b].items) {
      const Op op{"put_tensors", tensors[i].key};
      Reply reply;
      try {
        reply = node.read_reply(op);
      } catch (...) {
        drop_batches(batches, b + 1, batches.size());
        throw;
      }
      const auto error = error_of(*reply);
      if (!error) continue;
      if (impl_->is_retryable(*error, node)) {
        retries.push_back(i);
      } else if (!first_error) {
        first_error = reply_error(op, node.address(), *error, impl_->options.cluster);
      }
    }
  }
  for (std::size_t i : retries) put_tensor(tensors[i].key, tensors[i].header, tensors[i].data);
  if (first_error) std::rethrow_exception(first_error);
}

TensorHeader Client::get_tensor(const std::string& key,
                                const std::function<void*(const TensorHeader&)>& allocate) {
  const Op op{"get_tensor", key};
  TensorHeader header;
  impl_->route(op, [&](Connection& node) {
    node.prepare_raw(op);
    send_get(node, key, op);
    GetResult result = receive_tensor(node, key, allocate, op);
    header = std::move(result.header);
    return result.error;
  });
  return header;
}

std::vector<TensorHeader> Client::get_tensors(
    const std::vector<std::string>& keys,
    const std::function<void*(std::size_t, const TensorHeader&)>& allocate) {
  std::vector<Batch> batches;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    Connection* node = &impl_->node_for(keys[i]);
    auto batch = std::find_if(batches.begin(), batches.end(),
                              [&](const Batch& b) { return b.connection == node; });
    if (batch == batches.end()) batch = batches.insert(batches.end(), Batch{node, {}});
    batch->items.push_back(i);
  }
  for (std::size_t b = 0; b < batches.size(); ++b) {
    try {
      for (std::size_t i : batches[b].items) {
        const Op op{"get_tensors", keys[i]};
        if (i == batches[b].items.front()) batches[b].connection->prepare_raw(op);
        send_get(*batches[b].connection, keys[i], op);
      }
    } catch (...) {
      drop_batches(batches, 0, b + 1);
      throw;
    }
  }
  // Read every reply, so the connections stay in step, before reporting the first error.
  std::vector<TensorHeader> headers(keys.size());
  std::exception_ptr first_error;
  std::vector<std::size_t> retries;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    Connection& node = *batches[b].connection;
    for (std::size_t i : batches[b].items) {
      const Op op{"get_tensors", keys[i]};
      try {
        GetResult result = receive_tensor(
            node, keys[i], [&](const TensorHeader& header) { return allocate(i, header); }, op);
        if (!result.error) {
          headers[i] = std::move(result.header);
        } else if (impl_->is_retryable(*result.error, node)) {
          retries.push_back(i);
        } else if (!first_error) {
          first_error = reply_error(op, node.address(), *result.error, impl_->options.cluster);
        }
      } catch (const Error&) {
        if (!node.connected()) {
          drop_batches(batches, b + 1, batches.size());
          throw;
        }
        if (!first_error) first_error = std::current_exception(); // still in step
      }
    }
  }
  for (std::size_t i : retries) {
    headers[i] =
        get_tensor(keys[i], [&](const TensorHeader& header) { return allocate(i, header); });
  }
  if (first_error) std::rethrow_exception(first_error);
  return headers;
}

namespace {

// The destination of a get into a caller's buffer, once the stored tensor is known to fit.
void* fit(const std::string& key, const TensorHeader& header, void* out, std::size_t capacity) {
  if (header.data_bytes() > capacity) {
    throw TensorFormatError("key '" + key + "' holds " + header.describe() + " (" +
                            std::to_string(header.data_bytes()) + " bytes) but the buffer has " +
                            std::to_string(capacity) + " bytes");
  }
  return out;
}

} // namespace

TensorHeader Client::get_tensor(const std::string& key, void* out, std::size_t capacity_bytes) {
  return get_tensor(
      key, [&](const TensorHeader& header) { return fit(key, header, out, capacity_bytes); });
}

TensorHeader Client::get_tensor(const std::string& key, void* out, std::size_t capacity_bytes,
                                DType expected_dtype) {
  return get_tensor(key, [&](const TensorHeader& header) {
    if (header.dtype != expected_dtype) {
      throw TensorFormatError("key '" + key + "' holds " + header.describe() + " but " +
                              dtype_name(expected_dtype) + " was expected");
    }
    return fit(key, header, out, capacity_bytes);
  });
}

// --- messages ----------------------------------------------------------------------------------

long long Client::push_message(const std::string& key, const std::string& envelope,
                               const TensorHeader& header, const void* data) {
  const Op op{"push_message", key};
  const SetCommand push(key, header, data, op, "RPUSH", envelope);
  long long length = 0;
  impl_->route(op, [&](Connection& node) {
    node.prepare_raw(op);
    send_set(node, push, op);
    const Reply reply = node.read_reply(op);
    if (const auto error = error_of(*reply)) return error;
    length = integer_of(reply, op);
    return std::optional<std::string>();
  });
  return length;
}

bool Client::pop_message(const std::string& key, double wait_s, std::size_t envelope_bytes,
                         const std::function<bool(const std::string&)>& tensor_follows,
                         const std::function<void*(const TensorHeader&)>& allocate,
                         Message& message) {
  check_seconds("wait", wait_s);
  const Op op{"pop_message", key};
  bool popped = false;
  impl_->route(op, [&](Connection& node) {
    node.prepare_raw(op);
    node.apply_timeout(wait_s); // the server holds the reply back for up to wait_s
    struct Restore {
      Connection& node;
      ~Restore() {
        try {
          node.apply_timeout();
        } catch (const Error&) {
          // apply_timeout dropped the connection; the next call reconnects
        }
      }
    } restore{node};
    send_blpop(node, key, wait_s, op);
    PopResult result = receive_message(node, key, envelope_bytes, tensor_follows, allocate, op);
    if (result.error) return result.error;
    popped = result.popped;
    if (popped) {
      message.envelope = std::move(result.envelope);
      message.has_tensor = result.has_tensor;
      message.header = std::move(result.header);
      message.text = std::move(result.text);
    }
    return std::optional<std::string>();
  });
  return popped;
}

// --- pipelines ---------------------------------------------------------------------------------

Command Command::of(const std::string& key, const std::vector<std::string_view>& args) {
  Command command{key, {}};
  for (std::string_view arg : args) command.args.push_back({arg});
  return command;
}

namespace {

// The RESP framing of commands, pointing at the arguments' pieces; the framing strings live
// in a deque so that the iovecs pointing at them stay valid while more are added.
class Framing {
public:
  void append(const Command& command, std::vector<iovec>& pieces) {
    add("*" + std::to_string(command.args.size()) + "\r\n", pieces);
    for (const Command::Argument& arg : command.args) {
      std::size_t size = 0;
      for (std::string_view piece : arg) size += piece.size();
      add("$" + std::to_string(size) + "\r\n", pieces);
      for (std::string_view piece : arg) {
        if (!piece.empty()) pieces.push_back({const_cast<char*>(piece.data()), piece.size()});
      }
      pieces.push_back({const_cast<char*>(kCrlf), 2});
    }
  }

private:
  void add(std::string text, std::vector<iovec>& pieces) {
    const std::string& stored = texts_.emplace_back(std::move(text));
    pieces.push_back({const_cast<char*>(stored.data()), stored.size()});
  }

  static constexpr const char* kCrlf = "\r\n";
  std::deque<std::string> texts_;
};

CommandReply reply_value(const redisReply& reply) {
  CommandReply value;
  switch (reply.type) {
  case REDIS_REPLY_INTEGER:
    value.type = CommandReply::Type::integer;
    value.integer = reply.integer;
    break;
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    value.type = CommandReply::Type::text;
    value.text = text_of(reply);
    break;
  case REDIS_REPLY_ERROR:
    value.type = CommandReply::Type::error;
    value.text = text_of(reply);
    break;
  case REDIS_REPLY_ARRAY:
    value.type = CommandReply::Type::array;
    for (std::size_t i = 0; i < reply.elements; ++i) {
      value.elements.push_back(reply_value(*reply.element[i]));
    }
    break;
  default: value.type = CommandReply::Type::nil;
  }
  return value;
}

} // namespace

std::vector<CommandReply> Client::pipeline(const std::vector<Command>& commands) {
  for (const Command& command : commands) {
    if (command.args.empty()) throw ConfigError("pipeline: a command without arguments");
  }
  std::vector<Batch> batches;
  for (std::size_t i = 0; i < commands.size(); ++i) {
    Connection* node = &impl_->node_for(commands[i].key);
    auto batch = std::find_if(batches.begin(), batches.end(),
                              [&](const Batch& b) { return b.connection == node; });
    if (batch == batches.end()) batch = batches.insert(batches.end(), Batch{node, {}});
    batch->items.push_back(i);
  }

  // Send everything before reading any reply: one round trip per node.
  Framing framing;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const Op op{"pipeline", commands[batches[b].items.front()].key};
    try {
      batches[b].connection->prepare_raw(op);
      std::vector<iovec> pieces;
      for (std::size_t i : batches[b].items) framing.append(commands[i], pieces);
      batches[b].connection->send(pieces.data(), pieces.size(), op);
    } catch (...) {
      drop_batches(batches, 0, b);
      throw;
    }
  }

  std::vector<CommandReply> replies(commands.size());
  std::optional<Redirect> moved;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    Connection& node = *batches[b].connection;
    for (std::size_t i : batches[b].items) {
      const Op op{"pipeline", commands[i].key};
      try {
        replies[i] = reply_value(*node.read_reply(op));
      } catch (...) {
        drop_batches(batches, b + 1, batches.size());
        throw;
      }
      if (replies[i].is_error() && impl_->options.cluster) {
        const Redirect redirect = parse_redirect(replies[i].text, node.parsed_address());
        if (redirect.kind == Redirect::moved) moved = redirect;
      }
    }
  }
  if (moved) impl_->follow_moved(*moved, Op{"pipeline", ""});
  return replies;
}

// --- keys, strings, counters, lists ------------------------------------------------------------

bool Client::exists(const std::string& key) {
  const Op op{"exists", key};
  return integer_of(impl_->run(op, {"EXISTS", key}), op) > 0;
}

bool Client::poll_key(const std::string& key, double timeout_s, double interval_s) {
  check_seconds("poll interval", interval_s);
  const Clock::time_point deadline = Clock::now() + seconds(std::max(timeout_s, 0.0));
  for (;;) {
    if (exists(key)) return true;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return false;
    std::this_thread::sleep_for(std::min(seconds(interval_s), deadline - now));
  }
}

long long Client::delete_key(const std::string& key) {
  const Op op{"delete", key};
  return integer_of(impl_->run(op, {"DEL", key}), op);
}

void Client::set_string(const std::string& key, const std::string& value) {
  impl_->run(Op{"set_string", key}, {"SET", key, value});
}

bool Client::get_string(const std::string& key, std::string& value) {
  const Op op{"get_string", key};
  const Reply reply = impl_->run(op, {"GET", key});
  if (reply->type == REDIS_REPLY_NIL) return false;
  if (reply->type != REDIS_REPLY_STRING) unexpected_reply(op, "a string");
  value = text_of(*reply);
  return true;
}

long long Client::increment(const std::string& key, long long by) {
  const Op op{"increment", key};
  return integer_of(impl_->run(op, {"INCRBY", key, std::to_string(by)}), op);
}

long long Client::list_push(const std::string& key, const std::string& value) {
  const Op op{"list_push", key};
  return integer_of(impl_->run(op, {"RPUSH", key, value}), op);
}

long long Client::list_length(const std::string& key) {
  const Op op{"list_length", key};
  return integer_of(impl_->run(op, {"LLEN", key}), op);
}

std::vector<std::string> Client::list_range(const std::string& key, long long start,
                                            long long stop) {
  const Op op{"list_range", key};
  const Reply reply = impl_->run(op, {"LRANGE", key, std::to_string(start), std::to_string(stop)});
  if (reply->type != REDIS_REPLY_ARRAY) unexpected_reply(op, "an array");
  std::vector<std::string> items;
  for (std::size_t i = 0; i < reply->elements; ++i) items.push_back(text_of(*reply->element[i]));
  return items;
}

void Client::list_trim(const std::string& key, long long start, long long stop) {
  impl_->run(Op{"list_trim", key}, {"LTRIM", key, std::to_string(start), std::to_string(stop)});
}

std::string Client::command(const std::vector<std::string>& argv, const std::string& key) {
  if (argv.empty()) throw ConfigError("command: no arguments given");
  const Op op{argv.front(), key};
  const Reply reply = impl_->run(op, argv);
  switch (reply->type) {
  case REDIS_REPLY_INTEGER: return std::to_string(reply->integer);
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS: return text_of(*reply);
  case REDIS_REPLY_NIL: return {};
  default:
    throw ConfigError(op.prefix() + "the reply is an array; command() returns single values");
  }
}

} // namespace nekrs_ml
