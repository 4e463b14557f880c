// The run's environment beyond the client options (Client::options_from_env), read in env.cpp.
#pragma once

#include <string>

namespace nekrs_ml {

// $NEKRS_ML_NAMESPACE, the key prefix the orchestrator exported ("" when unset).
std::string namespace_from_env();

} // namespace nekrs_ml
