// Server addresses as printed by `nekrs-ml db start`: "host:port", "[v6addr]:port", "unix:/path".
#pragma once

#include <string>

namespace nekrs_ml {

struct Address {
  bool is_unix = false;
  std::string host; // TCP host name or address, without brackets
  int port = 0;
  std::string path; // Unix socket path
};

// Throws ConfigError naming the address and the accepted forms.
Address parse_address(const std::string& text);

// "host:port", bracketing IPv6 hosts.
std::string format_tcp_address(const std::string& host, int port);

} // namespace nekrs_ml
