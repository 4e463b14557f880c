// nekrs_ml::Client: the public operations (tensors, messages, pipelines, keys, strings,
// counters, lists). The routing (one connection per server, Redis Cluster redirects, retries) is
// Client::Impl in client_routing.cpp; socket work lives in connection.cpp and tensor_io.cpp.
#include "nekrs_ml/client.hpp"

#include "client_routing.hpp"
#include "tensor_io.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <exception>
#include <optional>
#include <thread>

namespace nekrs_ml {

using namespace routing;

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
// in a deque so that the iovecs pointing at them stay valid while more are added. Framed here,
// not with redisFormatCommandArgv: an argument may be several pieces (a message's prelude, a
// tensor header, the caller's array) that go out in one sendmsg without being copied into one
// buffer, which is what keeps large values at the socket's speed (docs/benchmarks.md, `bench
// transfer`).
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
