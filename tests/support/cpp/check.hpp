// Minimal checks for the C++ tests: count failures, report them, exit non-zero.
#pragma once

#include <iostream>
#include <string>

inline int& check_failures() {
  static int failures = 0;
  return failures;
}

#define CHECK(...)                                                                                 \
  do {                                                                                             \
    if (!(__VA_ARGS__)) {                                                                          \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #__VA_ARGS__ "\n";            \
      ++check_failures();                                                                          \
    }                                                                                              \
  } while (0)

// Checks that the statement (the last argument) throws `Exception` with `words` in its message.
#define CHECK_THROWS(Exception, words, ...)                                                        \
  do {                                                                                             \
    try {                                                                                          \
      __VA_ARGS__;                                                                                 \
      std::cerr << __FILE__ << ":" << __LINE__ << ": no " #Exception " from " #__VA_ARGS__ "\n";   \
      ++check_failures();                                                                          \
    } catch (const Exception& error) {                                                             \
      if (std::string(error.what()).find(words) == std::string::npos) {                            \
        std::cerr << __FILE__ << ":" << __LINE__ << ": message lacks '" << (words)                 \
                  << "': " << error.what() << "\n";                                                \
        ++check_failures();                                                                        \
      }                                                                                            \
    }                                                                                              \
  } while (0)

inline int check_report(const char* name) {
  std::cout << name << ": " << (check_failures() == 0 ? "all checks passed" : "FAILED") << "\n";
  return check_failures() == 0 ? 0 : 1;
}
