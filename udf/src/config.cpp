// The .par options of nekrs_ml (config.hpp): the one .par parser, used by the NekRS plugin and,
// through nekrs_ml._core, by the Python tools (nekrs_ml/config.py).
// One file: the schema rows, the checks of one value and the parser of a .par are one contract
// (config_schema.tsv), and every reader of a case goes through all three.
#include "nekrs_ml/config.hpp"

#include "nekrs_ml/errors.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <locale>
#include <charconv>
#include <type_traits>
#include <sstream>

namespace nekrs_ml {
namespace {

const char* const kSchema =
#include "config_schema.inc"
    ;

const char* const kBlanks = " \t";

std::string lower(std::string text) {
  // ASCII only, like NekRS: values are compared byte for byte otherwise.
  for (char& c : text) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return text;
}

std::string upper(std::string text) {
  for (char& c : text) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return text;
}

std::string trim(const std::string& text, const char* chars = kBlanks) {
  const auto begin = text.find_first_not_of(chars);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(chars) - begin + 1);
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t end; (end = text.find(separator, start)) != std::string::npos; start = end + 1) {
    parts.push_back(text.substr(start, end - start));
  }
  parts.push_back(text.substr(start));
  return parts;
}

// "a", "a or b", "a, b or c".
std::string or_list(const std::vector<std::string>& items) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += (i + 1 == items.size()) ? " or " : ", ";
    out += items[i];
  }
  return out;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// --- numbers ---------------------------------------------------------------------------------
// The syntax is checked first, so that both languages accept exactly the same spellings
// (no "inf", "nan", hex, digit separators or surrounding text). The conversion ignores the
// locale, so a host program's setlocale() cannot change how "0.5" reads.

struct OutOfRange {};

template <typename T> T read_number(const std::string& text) {
  // std::from_chars: locale-independent and free of iostreams (whose locale facets break
  // where a host links its own C++ runtime statically).
  const char* first = text.data() + (!text.empty() && text.front() == '+' ? 1 : 0);
  const char* last = text.data() + text.size();
  T value{};
  const auto [end, error] = std::from_chars(first, last, value);
  if constexpr (std::is_floating_point_v<T>) {
    // A negative exponent out of range is an underflow: zero, as Python's float() reads it.
    const auto exponent = text.find_first_of("eE");
    if (error == std::errc::result_out_of_range && exponent != std::string::npos &&
        text.find('-', exponent) != std::string::npos) {
      return text.front() == '-' ? -T{0} : T{0};
    }
  }
  if (error != std::errc() || end != last) throw OutOfRange{}; // syntax checked: overflow only
  return value;
}

bool all_digits(const std::string& text, std::size_t begin, std::size_t end) {
  if (begin >= end) return false;
  for (std::size_t i = begin; i < end; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  return true;
}

std::size_t sign_length(const std::string& text, std::size_t at = 0) {
  return (at < text.size() && (text[at] == '+' || text[at] == '-')) ? 1 : 0;
}

// [+-]digits
bool int_syntax(const std::string& text) {
  return all_digits(text, sign_length(text), text.size());
}

// [+-](digits[.[digits]] | .digits)[(e|E)[+-]digits]
bool float_syntax(const std::string& text) {
  std::size_t i = sign_length(text);
  const std::size_t mantissa = i;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  const bool integer_part = i > mantissa;
  if (i < text.size() && text[i] == '.') {
    const std::size_t fraction = ++i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
    if (!integer_part && i == fraction) return false;
  } else if (!integer_part) {
    return false;
  }
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    i += sign_length(text, i);
    return all_digits(text, i, text.size());
  }
  return i == text.size();
}

// Return false if `text` is not a number of the type; throw OutOfRange on overflow.
bool parse_int(const std::string& text, long long& value) {
  if (!int_syntax(text)) return false;
  value = read_number<long long>(text);
  return true;
}

bool parse_float(const std::string& text, double& value) {
  if (!float_syntax(text)) return false;
  value = read_number<double>(text);
  return true;
}

double schema_number(const std::string& text) {
  double value = 0.0;
  if (!parse_float(text, value)) {
    throw ConfigError("config_schema.tsv: bound '" + text + "' is not a number");
  }
  return value;
}

// --- formats of str options ------------------------------------------------------------------
const char* const kMemoryFormat = "@memory"; // a Redis memory size
const char* const kNameFormat = "@name";     // a name used inside the database's keys
const long long kMinMemory = 1LL << 20;       // 1mb: what an empty redis-server needs
const long long kMaxMemory = 4096LL << 30;    // 4096gb

// Bytes of a Redis memory size ("512mb", "4gb", "1000000"; units as redis.conf reads them:
// k = 1000, kb = 1024, ...); -1 if `text` is not one.
long long memory_bytes(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 15) return -1;
  const std::string unit = text.substr(digits);
  static const std::vector<std::pair<std::string, long long>> units = {
      {"", 1}, {"b", 1}, {"k", 1000}, {"kb", 1LL << 10}, {"m", 1000000},
      {"mb", 1LL << 20}, {"g", 1000000000}, {"gb", 1LL << 30}};
  for (const auto& [name, scale] : units) {
    if (unit == name) {
      const long long number = std::stoll(text.substr(0, digits));
      return number > kMaxMemory / scale ? kMaxMemory + 1 : number * scale;
    }
  }
  return -1;
}

void check_memory(const std::string& text, const std::string& name) {
  const long long bytes = memory_bytes(lower(text));
  if (bytes < 0) {
    throw ConfigError(name + " = '" + text + "' is not a Redis memory size; use a byte count " +
                      "or a number with a unit k, kb, m, mb, g or gb (e.g. 512mb, 4gb)");
  }
  if (bytes < kMinMemory || bytes > kMaxMemory) {
    throw ConfigError(name + " = " + text + ": must be between 1mb and 4096gb");
  }
}

void check_key_name(const std::string& text, const std::string& name) {
  bool valid = !text.empty() && text.size() <= 200;
  for (char c : text) {
    valid = valid && c != '{' && c != '}' && c != ':' && c != ' ' && c != '\t' &&
            static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  }
  if (!valid) {
    throw ConfigError(name + " = '" + text + "' is not a valid name: use 1-200 characters " +
                      "without '{', '}', ':', spaces or control characters (it is part of the " +
                      "database keys)");
  }
}

// --- the choices column ------------------------------------------------------------------------
struct Constraint {
  std::vector<std::string> alternatives; // allowed values ("N" in one stands for a number)
  std::string low, high;                 // bounds as spelled in the schema (for messages)
  bool low_inclusive = true;
  std::string format;                    // kMemoryFormat or kNameFormat; empty otherwise

  static Constraint parse(const std::string& text) {
    Constraint c;
    if (text == "-") return c;
    if (text == kMemoryFormat || text == kNameFormat) {
      c.format = text;
    } else if (const auto dots = text.find(".."); dots != std::string::npos) {
      // lo..hi (inclusive) or >lo..hi (lo excluded)
      c.low_inclusive = text[0] != '>';
      c.low = text.substr(c.low_inclusive ? 0 : 1, dots - (c.low_inclusive ? 0 : 1));
      c.high = text.substr(dots + 2);
    } else if (text.rfind(">=", 0) == 0) {
      c.low = text.substr(2);
    } else if (text.rfind(">", 0) == 0) {
      c.low = text.substr(1);
      c.low_inclusive = false;
    } else {
      c.alternatives = split(text, '|');
    }
    return c;
  }

  bool numeric() const { return !low.empty() || !high.empty(); }

  bool in_range(double value) const {
    if (!low.empty()) {
      const double bound = schema_number(low);
      if (value < bound || (value == bound && !low_inclusive)) return false;
    }
    return high.empty() || value <= schema_number(high);
  }

  std::string describe_range() const {
    if (!high.empty() && !low_inclusive) return "> " + low + " and <= " + high;
    if (!high.empty()) return "between " + low + " and " + high;
    return (low_inclusive ? ">= " : "> ") + low;
  }

  // The alternative that the lower-cased `value` stands for; empty if none.
  std::string match(const std::string& value) const {
    for (const auto& alternative : alternatives) {
      const auto n = alternative.find('N');
      if (n == std::string::npos) {
        if (value == lower(alternative)) return alternative;
        continue;
      }
      const std::string prefix = lower(alternative.substr(0, n));
      const std::string suffix = lower(alternative.substr(n + 1));
      if (value.size() > prefix.size() + suffix.size() && value.rfind(prefix, 0) == 0 &&
          value.compare(value.size() - suffix.size(), suffix.size(), suffix) == 0 &&
          all_digits(value, prefix.size(), value.size() - suffix.size())) {
        return value;
      }
    }
    return "";
  }
};

// --- conversion of one value -----------------------------------------------------------------
Config::Value convert_number(const ConfigOption& option, const Constraint& constraint,
                             const std::string& text, const std::string& name) {
  if (option.type == "intlist") {
    std::vector<long long> items;
    for (const auto& part : split(text, ',')) {
      long long item = 0;
      if (!parse_int(trim(part), item)) {
        throw ConfigError(name + " = '" + text + "' is not a comma-separated list of integers");
      }
      items.push_back(item);
    }
    for (long long item : items) {
      if (!constraint.in_range(static_cast<double>(item))) {
        throw ConfigError(name + " = " + text + ": every entry must be " +
                          constraint.describe_range());
      }
    }
    return items;
  }
  if (option.type == "int") {
    long long value = 0;
    if (!parse_int(text, value)) throw ConfigError(name + " = '" + text + "' is not an integer");
    if (!constraint.in_range(static_cast<double>(value))) {
      throw ConfigError(name + " = " + text + ": must be " + constraint.describe_range());
    }
    return value;
  }
  double value = 0.0;
  if (!parse_float(text, value)) throw ConfigError(name + " = '" + text + "' is not a number");
  if (!constraint.in_range(value)) {
    throw ConfigError(name + " = " + text + ": must be " + constraint.describe_range());
  }
  return value;
}

// The typed value of `raw` for `option`; `where` ("file:line: ") prefixes the messages.
Config::Value convert(const ConfigOption& option, const std::string& raw,
                      const std::string& where) {
  const std::string name = where + "[" + upper(option.section) + "] " + option.key;
  const std::string text = trim(raw);
  const Constraint constraint = Constraint::parse(option.choices);
  if (option.type == "int" || option.type == "float" || option.type == "intlist") {
    try {
      return convert_number(option, constraint, text, name);
    } catch (const OutOfRange&) {
      throw ConfigError(name + " = '" + text + "' is out of range");
    }
  }
  if (constraint.format == kMemoryFormat) check_memory(text, name);
  if (constraint.format == kNameFormat) check_key_name(text, name);
  if (constraint.alternatives.empty()) return text;
  const std::string match = constraint.match(lower(text));
  if (match.empty()) {
    throw ConfigError(name + " = '" + text + "' is not valid; use " +
                      or_list(constraint.alternatives));
  }
  if (option.type == "bool") return match == "true";
  return match;
}

// --- the schema ------------------------------------------------------------------------------
void check_schema_row(const ConfigOption& option, const std::string& where) {
  static const std::vector<std::string> types = {"int",  "float",  "str",
                                                  "bool", "choice", "intlist"};
  bool known = false;
  for (const auto& type : types) known = known || option.type == type;
  if (!known) {
    throw ConfigError(where + ": type '" + option.type + "' is not one of " + join(types));
  }
  const Constraint constraint = Constraint::parse(option.choices);
  const bool numeric_type =
      option.type == "int" || option.type == "float" || option.type == "intlist";
  const bool fits = numeric_type ? constraint.alternatives.empty() && constraint.format.empty()
                                 : !constraint.numeric() &&
                                       (option.type == "str" || !constraint.alternatives.empty()) &&
                                       (option.type == "str" || constraint.format.empty());
  if (!fits) {
    throw ConfigError(where + ": choices '" + option.choices + "' do not fit type " + option.type);
  }
  convert(option, option.default_text, where + ": default "); // the defaults must be valid too
}

std::vector<ConfigOption> load_schema() {
  std::vector<ConfigOption> rows;
  const auto lines = split(kSchema, '\n');
  for (std::size_t number = 1; number <= lines.size(); ++number) {
    const std::string line = trim(lines[number - 1], "\r");
    if (trim(line).empty() || line[0] == '#') continue;
    const std::string where = "config_schema.tsv line " + std::to_string(number);
    const auto cells = split(line, '\t');
    if (cells.size() != 7) {
      throw ConfigError(where + ": expected 7 tab-separated columns (section, key, type, " +
                        "default, unit, choices, description), got " +
                        std::to_string(cells.size()));
    }
    ConfigOption option{cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]};
    for (const auto& row : rows) {
      if (lower(row.section) == lower(option.section) && lower(row.key) == lower(option.key)) {
        throw ConfigError(where + ": [" + option.section + "] " + option.key + " is listed twice");
      }
    }
    check_schema_row(option, where);
    rows.push_back(std::move(option));
  }
  return rows;
}

// The schema's spelling of a validated section; throws ConfigError for any other.
const std::string& find_section(const std::string& section, const std::string& where) {
  for (const auto& name : Config::sections()) {
    if (lower(name) == lower(section)) return name;
  }
  std::vector<std::string> names;
  for (const auto& name : Config::sections()) names.push_back("[" + upper(name) + "]");
  throw ConfigError(where + "no section [" + upper(section) + "] in the schema; use " +
                    or_list(names));
}

// Characters two strings have in common by Ratcliff/Obershelp: the longest common block
// (leftmost in a, then in b), then the same on each side of it, as Python's
// difflib.SequenceMatcher counts them.
std::size_t matching_characters(const std::string& a, std::size_t alo, std::size_t ahi,
                                const std::string& b, std::size_t blo, std::size_t bhi) {
  std::size_t best_i = alo, best_j = blo, best_k = 0;
  for (std::size_t i = alo; i < ahi; ++i) {
    for (std::size_t j = blo; j < bhi; ++j) {
      std::size_t k = 0;
      while (i + k < ahi && j + k < bhi && a[i + k] == b[j + k]) ++k;
      if (k > best_k) {
        best_i = i;
        best_j = j;
        best_k = k;
      }
    }
  }
  if (best_k == 0) return 0;
  return best_k + matching_characters(a, alo, best_i, b, blo, best_j) +
         matching_characters(a, best_i + best_k, ahi, b, best_j + best_k, bhi);
}

// "did you mean 'key'? " for the valid key most like `key` (similarity >= 0.6, ties to the
// greater name, as difflib.get_close_matches picks), else "".
std::string suggestion(const std::string& key, const std::vector<std::string>& keys) {
  const std::string wanted = lower(key);
  double best_score = 0.6;
  std::string best, best_lower;
  for (const auto& candidate : keys) {
    const std::string name = lower(candidate);
    const double total = static_cast<double>(name.size() + wanted.size());
    const double score = total > 0 ? 2.0 * static_cast<double>(matching_characters(
                                               name, 0, name.size(), wanted, 0, wanted.size())) /
                                          total
                                    : 0.0;
    if (score > best_score || (score == best_score && name > best_lower)) {
      best_score = score;
      best = candidate;
      best_lower = name;
    }
  }
  return best.empty() ? "" : "did you mean '" + best + "'? ";
}

std::size_t find_option(const std::string& section, const std::string& key,
                        const std::string& where) {
  const std::string& name = find_section(section, where);
  const auto& rows = Config::schema();
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].section != name) continue;
    if (lower(rows[i].key) == lower(key)) return i;
    keys.push_back(rows[i].key);
  }
  throw ConfigError(where + "[" + upper(name) + "] unknown key '" + key + "'; " +
                    suggestion(key, keys) + "valid keys: " + join(keys));
}

// --- .par text -------------------------------------------------------------------------------
// `text` up to a '#' or ';' at its start or after whitespace.
std::string strip_comment(const std::string& text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool after_blank = i == 0 || text[i - 1] == ' ' || text[i - 1] == '\t';
    if ((text[i] == '#' || text[i] == ';') && after_blank) {
      return text.substr(0, i);
    }
  }
  return text;
}

// The value of a "key = value" line: a double-quoted value as is, any other lower-cased.
std::string split_value(const std::string& raw_value, const std::string& where) {
  const std::string raw = trim(raw_value);
  if (raw.empty() || raw[0] != '"') return lower(trim(strip_comment(raw)));
  const auto end = raw.find('"', 1);
  if (end == std::string::npos) {
    throw ConfigError(where + "the value " + raw + " has no closing '\"'");
  }
  if (!trim(strip_comment(raw.substr(end + 1))).empty()) {
    throw ConfigError(where + "unexpected text after the closing quote: " + raw);
  }
  return raw.substr(1, end - 1);
}

const char* getter_of(const std::string& type) {
  if (type == "int") return "get_int";
  if (type == "float") return "get_double";
  if (type == "bool") return "get_bool";
  if (type == "intlist") return "get_int_list";
  return "get_string";
}

template <typename T> const T& typed(const Config::Value& value, const ConfigOption& option) {
  if (const T* typed_value = std::get_if<T>(&value)) return *typed_value;
  throw ConfigError("[" + upper(option.section) + "] " + option.key + " is a " + option.type +
                    " option; read it with " + getter_of(option.type));
}

} // namespace

// --- Config ----------------------------------------------------------------------------------
const std::vector<ConfigOption>& Config::schema() {
  static const std::vector<ConfigOption> rows = load_schema();
  return rows;
}

const std::vector<std::string>& Config::sections() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& row : schema()) {
      if (out.empty() || out.back() != row.section) out.push_back(row.section);
    }
    return out;
  }();
  return names;
}

Config::Config(std::string source) : source_(std::move(source)) {
  for (const auto& option : schema()) values_.push_back(convert(option, option.default_text, ""));
}

Config Config::from_text(const std::string& text, const std::string& source) {
  Config config(source);
  std::string section; // lower-cased; empty outside the validated sections
  std::vector<std::size_t> first_line(schema().size(), 0);
  const auto lines = split(text, '\n');
  for (std::size_t number = 1; number <= lines.size(); ++number) {
    const std::string where = source + ":" + std::to_string(number) + ": ";
    const std::string line = trim(lines[number - 1], " \t\r");
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line[0] == '[') {
      const auto end = line.find(']');
      if (end == std::string::npos || !trim(strip_comment(line.substr(end + 1))).empty()) {
        throw ConfigError(where + "section header " + line + " is not '[NAME]'");
      }
      section = lower(trim(line.substr(1, end - 1)));
      bool validated = false;
      for (const auto& name : sections()) validated = validated || lower(name) == section;
      if (!validated) section.clear();
      continue;
    }
    if (section.empty()) continue;
    const auto equals = line.find('=');
    const std::string key = equals == std::string::npos ? "" : trim(line.substr(0, equals));
    if (key.empty()) {
      throw ConfigError(where + "[" + upper(section) + "] expected 'key = value', got " + line);
    }
    const std::size_t option = find_option(section, key, where);
    const ConfigOption& row = schema()[option];
    if (first_line[option] != 0) {
      throw ConfigError(where + "[" + upper(section) + "] " + row.key +
                        " is given twice (first on line " + std::to_string(first_line[option]) +
                        ")");
    }
    first_line[option] = number;
    const std::string value =
        split_value(line.substr(equals + 1), where + "[" + upper(section) + "] " + row.key + ": ");
    config.assign(option, value, where);
  }
  return config;
}

namespace {
// Whether .par text has a [NEKRS_ML] header (case-insensitive, blanks allowed inside).
bool has_main_section(const std::string& text) {
  for (const auto& raw : split(text, '\n')) {
    const std::string line = trim(raw, " \t\r");
    const auto end = line.find(']');
    if (!line.empty() && line[0] == '[' && end != std::string::npos &&
        lower(trim(line.substr(1, end - 1))) == "nekrs_ml") {
      return true;
    }
  }
  return false;
}
} // namespace

Config Config::from_par_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw ConfigError("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) throw ConfigError("cannot read " + path + ": " + std::strerror(errno));
  if (!has_main_section(text.str())) {
    // Without it a case would run silently on the defaults.
    throw ConfigError(path + ": no [NEKRS_ML] section; add one to the case file: a line " +
                      "'[NEKRS_ML]' followed by its options, e.g. 'workflow = train' (an empty " +
                      "section takes every default; see docs/configuration.md)");
  }
  return from_text(text.str(), path);
}

void Config::set(const std::string& section, const std::string& key,
                 const std::string& value_text) {
  const std::string where = source_.empty() ? "" : source_ + ": ";
  assign(find_option(section, key, where), value_text, where);
}

void Config::assign(std::size_t option, const std::string& text, const std::string& where) {
  values_[option] = convert(schema()[option], text, where);
}

const Config::Value& Config::get(const std::string& section, const std::string& key) const {
  return values_[find_option(section, key, "")];
}

long long Config::get_int(const std::string& section, const std::string& key) const {
  const std::size_t option = find_option(section, key, "");
  return typed<long long>(values_[option], schema()[option]);
}

double Config::get_double(const std::string& section, const std::string& key) const {
  const std::size_t option = find_option(section, key, "");
  if (const auto* integer = std::get_if<long long>(&values_[option])) {
    return static_cast<double>(*integer);
  }
  return typed<double>(values_[option], schema()[option]);
}

std::string Config::get_string(const std::string& section, const std::string& key) const {
  const std::size_t option = find_option(section, key, "");
  return typed<std::string>(values_[option], schema()[option]);
}

bool Config::get_bool(const std::string& section, const std::string& key) const {
  const std::size_t option = find_option(section, key, "");
  return typed<bool>(values_[option], schema()[option]);
}

std::vector<long long> Config::get_int_list(const std::string& section,
                                            const std::string& key) const {
  const std::size_t option = find_option(section, key, "");
  return typed<std::vector<long long>>(values_[option], schema()[option]);
}

} // namespace nekrs_ml
