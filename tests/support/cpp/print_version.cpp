// Prints the versions a program built against the installed package sees: the headers', the
// library's and the CMake package's (tests/integration/test_cpp.py compares them with pyproject.toml).
#include "nekrs_ml/version.hpp"

#include <cstdio>

int main() {
  std::printf("%s %s %s\n", nekrs_ml::version(), nekrs_ml::library_version(),
              NEKRS_ML_PACKAGE_VERSION);
  return 0;
}
