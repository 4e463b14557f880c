// The run's environment beyond the client options (Client::options_from_env), read in env.cpp.
#pragma once

#include <string>

namespace nekrs_ml {

// $NEKRS_ML_NAMESPACE, the key prefix the orchestrator exported ("" when unset).
std::string namespace_from_env();

// $NEKRS_ML_MODEL_NAMESPACE, the key prefix of the model registry and the model workers when
// they are shared by several solvers (an ensemble's members); "" when unset. Throws ConfigError
// for a value that is not a valid namespace.
std::string model_namespace_from_env();

} // namespace nekrs_ml
