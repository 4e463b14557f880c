// Client::Impl, the routing of nekrs_ml::Client (client_routing.cpp): one connection per
// server, the slot map of a Redis Cluster, MOVED / ASK redirects and retries of transient errors.
// The public operations (client.cpp) run their commands through Impl::route.
#pragma once

#include "nekrs_ml/client.hpp"

#include "connection.hpp"
#include "slots.hpp"

#include <chrono>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace nekrs_ml {
namespace routing {

using Clock = std::chrono::steady_clock;

constexpr int kMaxRedirects = 5;
constexpr auto kRetryPause = std::chrono::milliseconds(20);

Clock::duration seconds(double value);

struct Redirect {
  enum Kind { none, moved, ask } kind = none;
  unsigned slot = 0;
  std::string address;
};

// "MOVED 3999 127.0.0.1:6381" or "ASK ...". IPv6 hosts come without brackets; an empty host
// means the host of the node that replied.
Redirect parse_redirect(const std::string& error, const Address& replied_from);
// The cluster is reconfiguring or the server is loading its data: worth trying again shortly.
bool is_transient(const std::string& error);
std::exception_ptr reply_error(const Op& op, const std::string& address, const std::string& error,
                               bool cluster);
std::optional<std::string> error_of(const redisReply& reply);
std::string text_of(const redisReply& reply);
[[noreturn]] void unexpected_reply(const Op& op, const char* expected);
long long integer_of(const Reply& reply, const Op& op);
// A timeout or interval in seconds: positive, finite and at most 1e6; else ConfigError.
void check_seconds(const char* what, double value);

} // namespace routing

struct Client::Impl {
  explicit Impl(const ClientOptions& client_options);

  Connection& connection(const std::string& address);
  Connection& node_for(std::string_view key);
  void load_slots(const Op& op);
  void follow_moved(const routing::Redirect& redirect, const Op& op);
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

template <typename Attempt> void Client::Impl::route(const Op& op, Attempt attempt) {
  using namespace routing;
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

} // namespace nekrs_ml
