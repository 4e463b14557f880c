// The routing of nekrs_ml::Client (client_routing.hpp): connections, the cluster's slot map,
// redirects and retries.
#include "client_routing.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace nekrs_ml {

namespace {

bool starts_with(const std::string& text, const char* prefix) { return text.rfind(prefix, 0) == 0; }

void validate(const ClientOptions& options) {
  if (options.addresses.empty()) {
    throw ConfigError("no server address given; pass the addresses printed by `nekrs-ml db start`");
  }
  for (const std::string& address : options.addresses) parse_address(address);
  routing::check_seconds("timeout", options.timeout_s);
  routing::check_seconds("connect_timeout", options.connect_timeout_s);
}

} // namespace

namespace routing {

Clock::duration seconds(double value) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(value));
}

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

} // namespace routing

using namespace routing;

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

Reply Client::Impl::run(const Op& op, const std::vector<std::string>& argv) {
  Reply reply;
  route(op, [&](Connection& node) {
    reply = node.command(argv, op);
    return error_of(*reply);
  });
  return reply;
}

} // namespace nekrs_ml
