// nekrs_ml::Config — the [NEKRS_ML] and [REPRODUCER] sections of a NekRS case .par file.
//
// The options are one table, nekrs_ml/config_schema.tsv, compiled into the library. This is the
// one .par parser: the Python tools (nekrs_ml/config.py) read cases through it (nekrs_ml._core).
// Rules:
//  - section and key names are case-insensitive, and so are values unless double-quoted
//    (NekRS lower-cases them); '#' or ';' at the start of a line or after whitespace starts a
//    comment; only the schema's sections are validated, the NekRS ones are left alone;
//  - every option not given has its schema default;
//  - an unknown key or an invalid value throws ConfigError naming the file, line, section,
//    key, the value and what is valid, e.g.
//      "case.par:12: [NEKRS_ML] whenFull = 'sometimes' is not valid; use drop or wait".
#pragma once

#include <cstddef>
#include <string>
#include <variant>
#include <vector>

namespace nekrs_ml {

// One row of config_schema.tsv.
struct ConfigOption {
  std::string section;
  std::string key;
  std::string type; // int, float, str, bool, choice, intlist
  std::string default_text;
  std::string unit;
  std::string choices; // "a|b|c", ">=N", ">N", "lo..hi" or "-"
  std::string description;
};

class Config {
public:
  // int, float, bool, str and choice, intlist.
  using Value = std::variant<long long, double, bool, std::string, std::vector<long long>>;

  // Every option at its default. `source` prefixes the messages of set() (e.g. the .par name).
  explicit Config(std::string source = "");

  // Parses .par text; `source` names it in messages. Throws ConfigError.
  static Config from_text(const std::string& text, const std::string& source = "<text>");
  // Reads and parses a .par file. Throws ConfigError (also when it cannot be read).
  static Config from_par_file(const std::string& path);

  // The schema rows in file order, and the validated sections in schema order.
  static const std::vector<ConfigOption>& schema();
  static const std::vector<std::string>& sections();

  // Validates and sets one option from its text, as NekRS's own .par reader hands it over.
  void set(const std::string& section, const std::string& key, const std::string& value_text);

  // Lookups are case-insensitive; an unknown section or key throws ConfigError listing the
  // valid ones, and a getter of another type throws ConfigError naming the right getter.
  const Value& get(const std::string& section, const std::string& key) const;
  long long get_int(const std::string& section, const std::string& key) const;
  double get_double(const std::string& section, const std::string& key) const; // float or int
  std::string get_string(const std::string& section, const std::string& key) const; // str, choice
  bool get_bool(const std::string& section, const std::string& key) const;
  std::vector<long long> get_int_list(const std::string& section, const std::string& key) const;

  const std::string& source() const { return source_; }

private:
  void assign(std::size_t option, const std::string& text, const std::string& where);

  std::string source_;
  std::vector<Value> values_; // parallel to schema()
};

} // namespace nekrs_ml
