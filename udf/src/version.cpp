// The version libnekrsml was built as (version.hpp is generated from pyproject.toml).
#include "nekrs_ml/version.hpp"

namespace nekrs_ml {

const char* library_version() { return NEKRS_ML_VERSION; }

} // namespace nekrs_ml
