// Client::options_from_env and the run namespace: the environment that `nekrs-ml run` /
// `nekrs-ml db start` set up. The variable names are those of nekrs_ml/protocol.tsv.
#include "env.hpp"

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/keys.hpp"
#include "nekrs_ml/protocol.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <limits.h>
#include <unistd.h>

namespace nekrs_ml {

namespace {

std::string getenv_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

std::vector<std::string> split_addresses(const std::string& text) {
  std::vector<std::string> addresses;
  std::istringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    if (first != std::string::npos) addresses.push_back(item.substr(first, last - first + 1));
  }
  return addresses;
}

std::string read_password(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream content;
  if (!file || !(content << file.rdbuf())) {
    throw ConfigError("cannot read " NKML_ENV_PASSWORD_FILE " '" + path + "': " + std::strerror(errno));
  }
  std::string password = content.str();
  const auto end = password.find_last_not_of(" \t\r\n");
  password.erase(end == std::string::npos ? 0 : end + 1);
  return password;
}

std::string join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

// Name of the directory holding the socket: "unix:.../<hostname>/redis.sock" -> "<hostname>".
std::string socket_directory_name(const std::string& address) {
  if (address.rfind("unix:", 0) != 0) return {};
  return std::filesystem::path(address.substr(5)).parent_path().filename().string();
}

// Colocated mode: one server per node, at unix:<rundir>/<hostname>/redis.sock.
std::string this_node_address(const std::vector<std::string>& addresses) {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof name - 1) != 0) {
    throw ConfigError(std::string(NKML_ENV_MODE "=colocated: cannot read the host name: ") +
                      std::strerror(errno));
  }
  const std::string full_name = name;
  const std::string short_name = full_name.substr(0, full_name.find('.'));
  for (const std::string& address : addresses) {
    const std::string directory = socket_directory_name(address);
    if (!directory.empty() && (directory == short_name || directory == full_name)) return address;
  }
  throw ConfigError(NKML_ENV_MODE "=colocated: no address in " NKML_ENV_ADDRESSES " (" +
                    join(addresses) + ") belongs to this host '" + full_name +
                    "' (expected unix:<rundir>/" + short_name + "/redis.sock)");
}

double parse_timeout(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value > 0) || !std::isfinite(value)) {
    throw ConfigError(NKML_ENV_TIMEOUT " must be a positive number of seconds, got '" + text + "'");
  }
  return value;
}

} // namespace

ClientOptions Client::options_from_env() {
  ClientOptions options;
  options.addresses = split_addresses(getenv_or_empty(NKML_ENV_ADDRESSES));
  if (options.addresses.empty()) {
    throw ConfigError(NKML_ENV_ADDRESSES " is not set; start the orchestrator with "
                      "`nekrs-ml db start` or run under `nekrs-ml run`");
  }
  const std::string password_file = getenv_or_empty(NKML_ENV_PASSWORD_FILE);
  if (!password_file.empty()) options.password = read_password(password_file);

  const std::string mode = getenv_or_empty(NKML_ENV_MODE);
  if (mode == "cluster") {
    options.cluster = true;
  } else if (mode == "colocated") {
    options.addresses = {this_node_address(options.addresses)};
  } else if (!mode.empty() && mode != "single") {
    throw ConfigError(NKML_ENV_MODE " is '" + mode + "'; valid choices: single, colocated, cluster");
  }

  const std::string timeout = getenv_or_empty(NKML_ENV_TIMEOUT);
  if (!timeout.empty()) options.timeout_s = parse_timeout(timeout);
  return options;
}

std::string namespace_from_env() { return getenv_or_empty(NKML_ENV_NAMESPACE); }

std::string model_namespace_from_env() {
  const std::string ns = getenv_or_empty(NKML_ENV_MODEL_NAMESPACE);
  if (!keys::valid_namespace(ns)) {
    throw ConfigError(NKML_ENV_MODEL_NAMESPACE "='" + ns + "' is not a valid namespace: use a "
                      "name without '{', '}' or ':' (the run namespace of the shared model "
                      "registry and workers), or leave it unset");
  }
  return ns;
}

} // namespace nekrs_ml
