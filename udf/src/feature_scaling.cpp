// The feature scheme of a model version from its registry meta (feature_scaling.hpp).
#include "feature_scaling.hpp"

#include <stdexcept>

namespace nekrs_ml {
namespace {

// A reader of just enough JSON to walk the top level of one object (the meta is written by
// Python's json.dumps; no JSON library in libnekrsml).
class JsonScanner {
public:
  explicit JsonScanner(const std::string& text) : text_(text) {}

  void skip_space() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\n' ||
                                  text_[at_] == '\r')) {
      ++at_;
    }
  }
  bool next_is(char c) {
    skip_space();
    return at_ < text_.size() && text_[at_] == c;
  }
  void expect(char c) {
    if (!next_is(c)) fail(std::string("expected '") + c + "'");
    ++at_;
  }
  // A string value, its escapes resolved (\uXXXX kept as written: the scheme names are ASCII).
  std::string string() {
    expect('"');
    std::string value;
    for (; at_ < text_.size() && text_[at_] != '"'; ++at_) {
      if (text_[at_] == '\\') {
        if (++at_ >= text_.size()) break;
        const char c = text_[at_];
        value += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'u' ? '?' : c;
        if (c == 'u') at_ += 4;
        continue;
      }
      value += text_[at_];
    }
    if (at_ >= text_.size()) fail("unterminated string");
    ++at_;
    return value;
  }
  // Any value: strings, numbers, literals, and nested objects and arrays whole.
  void skip_value() {
    skip_space();
    if (at_ >= text_.size()) fail("missing value");
    if (text_[at_] == '"') {
      string();
      return;
    }
    if (text_[at_] == '{' || text_[at_] == '[') {
      int depth = 0;
      while (at_ < text_.size()) {
        const char c = text_[at_];
        if (c == '"') {
          string();
          continue;
        }
        if (c == '{' || c == '[') ++depth;
        if (c == '}' || c == ']') --depth;
        ++at_;
        if (depth == 0) return;
      }
      fail("unterminated object or array");
    }
    while (at_ < text_.size() && text_[at_] != ',' && text_[at_] != '}' && text_[at_] != ']') ++at_;
  }
  bool at_end() {
    skip_space();
    return at_ >= text_.size();
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("not a JSON object (" + what + " at offset " +
                                std::to_string(at_) + ")");
  }

private:
  const std::string& text_;
  std::size_t at_ = 0;
};

// The string value of the top-level field `field` of a JSON object; found = false when the
// object has no such field or its value is not a string. Nested objects and arrays are skipped
// whole, so a field of the same name inside them is never taken. Throws std::invalid_argument
// for text that is not a JSON object.
std::string json_top_level_string(const std::string& json, const std::string& field, bool& found) {
  found = false;
  JsonScanner scanner(json);
  scanner.expect('{');
  std::string result;
  if (!scanner.next_is('}')) {
    for (;;) {
      const std::string key = scanner.string();
      scanner.expect(':');
      if (key == field && scanner.next_is('"')) {
        result = scanner.string();
        found = true;
      } else {
        scanner.skip_value();
      }
      if (!scanner.next_is(',')) break;
      scanner.expect(',');
    }
  }
  scanner.expect('}');
  if (!scanner.at_end()) scanner.fail("text after the object");
  return result;
}

} // namespace

const char* feature_scheme_name(FeatureScheme scheme) {
  switch (scheme) {
  case FeatureScheme::dimensional: return "dimensional";
  case FeatureScheme::wall_units: return "wall_units";
  case FeatureScheme::unsupported: break;
  }
  return "unsupported";
}

FeatureScheme feature_scheme_of_meta(const std::string& meta, std::string& value) {
  value.clear();
  bool found = false;
  std::string features;
  try {
    features = json_top_level_string(meta, "features", found);
  } catch (const std::invalid_argument& error) {
    value = error.what();
    return FeatureScheme::unsupported;
  }
  if (!found || features == "dimensional") return FeatureScheme::dimensional;
  if (features == "wall_units") return FeatureScheme::wall_units;
  value = features;
  return FeatureScheme::unsupported;
}

} // namespace nekrs_ml
