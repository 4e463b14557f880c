// Exception types of libnekrsml. Every message names the key (or address) involved
// and, for server errors, quotes the server's reply.
#pragma once

#include <stdexcept>
#include <string>

namespace nekrs_ml {

// Base of every error thrown by libnekrsml.
class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// Could not connect, or the connection broke (includes a refused password).
class ConnectionError : public Error {
public:
  using Error::Error;
};

// A call did not complete within its timeout.
class TimeoutError : public Error {
public:
  using Error::Error;
};

// The server answered with an error reply (quoted in the message).
class ServerError : public Error {
public:
  using Error::Error;
};

// The server refused a password or the password is missing.
class AuthenticationError : public ConnectionError {
public:
  using ConnectionError::ConnectionError;
};

// A value is not a valid tensor of the nekrs_ml wire format, or does not match what the
// caller expects (dtype, shape, buffer size).
class TensorFormatError : public Error {
public:
  using Error::Error;
};

// The key does not exist.
class KeyNotFoundError : public Error {
public:
  using Error::Error;
};

// Invalid argument or configuration given by the caller.
class ConfigError : public Error {
public:
  using Error::Error;
};

} // namespace nekrs_ml
