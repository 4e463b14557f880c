#include "address.hpp"

#include "nekrs_ml/errors.hpp"

#include <cstdlib>

namespace nekrs_ml {

namespace {

constexpr char kUnixPrefix[] = "unix:";

[[noreturn]] void invalid(const std::string& text, const std::string& why) {
  throw ConfigError("invalid address '" + text + "' (" + why +
                    "); expected host:port, [ipv6]:port or unix:/path/to/socket");
}

int parse_port(const std::string& text, const std::string& port) {
  char* end = nullptr;
  const long value = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || value < 1 || value > 65535) {
    invalid(text, "bad port '" + port + "'");
  }
  return static_cast<int>(value);
}

} // namespace

Address parse_address(const std::string& text) {
  Address address;
  if (text.rfind(kUnixPrefix, 0) == 0) {
    address.is_unix = true;
    address.path = text.substr(sizeof kUnixPrefix - 1);
    if (address.path.empty()) invalid(text, "empty socket path");
    return address;
  }
  std::string::size_type colon;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      invalid(text, "missing ']:port'");
    }
    address.host = text.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string::npos) invalid(text, "missing port");
    address.host = text.substr(0, colon);
    if (address.host.find(':') != std::string::npos) invalid(text, "IPv6 hosts need brackets");
  }
  if (address.host.empty()) invalid(text, "empty host");
  address.port = parse_port(text, text.substr(colon + 1));
  return address;
}

std::string format_tcp_address(const std::string& host, int port) {
  const bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

} // namespace nekrs_ml
