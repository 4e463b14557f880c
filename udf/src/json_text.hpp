// JSON text of the run summary and the progress keys, written without a JSON library.
#pragma once

#include <charconv>
#include <cmath>
#include <string>

namespace nekrs_ml {

// Numbers in JSON without the locale; non-finite values become null (strict JSON).
inline std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  const auto result = std::to_chars(text, text + sizeof text, value);
  return std::string(text, result.ptr);
}

inline std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

} // namespace nekrs_ml
