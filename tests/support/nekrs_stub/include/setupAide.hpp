// Test stand-in for NekRS's setupAide: the run options, upper-case keys -> string values
// (what NekRS fills from the .par, e.g. "FLUID VISCOSITY", "NUMBER TIMESTEPS", "CASENAME").
#pragma once

#include <map>
#include <sstream>
#include <string>
#include <vector>

class setupAide {
public:
  // "" when the key is not set.
  std::string getArgs(std::string key) const {
    const auto it = keyWordToDataMap.find(key);
    return it == keyWordToDataMap.end() ? std::string() : it->second;
  }
  void removeArgs(std::string key) { keyWordToDataMap.erase(key); }
  void setArgs(std::string key, std::string value) { keyWordToDataMap[key] = value; }

  // The first whitespace-separated token of the value; 0 (and `value` untouched) when the key
  // is unset or the token does not parse.
  template <class T> int getArgs(std::string key, T& value) const {
    std::vector<T> values;
    getArgs(key, values);
    if (values.empty()) return 0;
    value = values[0];
    return 1;
  }
  template <class T> int getArgs(std::string key, std::vector<T>& values) const {
    std::istringstream args(getArgs(key));
    std::vector<T> parsed;
    T item;
    while (args >> item) parsed.push_back(item);
    if (parsed.empty()) return 0;
    values = parsed;
    return 1;
  }
  int compareArgs(std::string key, std::string token) const {
    return keyWordToDataMap.count(key) && keyWordToDataMap.at(key) == token;
  }

  std::map<std::string, std::string> keyWordToDataMap;
};
