// The feature scaling a model expects (docs/protocol.md, "Model features"), named by the field
// "features" of its registry meta: "dimensional" (also when absent) evaluates the solver's
// quantities as they are; "wall_units" takes the inputs scaled by h/nu (u h / nu per component)
// and answers the stress in wall units of the sample height (tau h^2 / nu^2, tau kinematic).
// The solver applies both scalings, since it alone knows its nu and h: the model workers and
// the in-process backend evaluate the model as it is, so each scaling happens exactly once.
#pragma once

#include <cstddef>
#include <string>

namespace nekrs_ml {

enum class FeatureScheme { dimensional, wall_units, unsupported };

const char* feature_scheme_name(FeatureScheme scheme);

// The scheme named by a model's registry meta (a JSON object). `value` gets the field's text
// when the scheme is unsupported (for the message), "" otherwise. Meta that is not a JSON
// object is unsupported too: its scaling cannot be known.
FeatureScheme feature_scheme_of_meta(const std::string& meta, std::string& value);

// The two scalings of one solver (its kinematic viscosity nu and sample height h).
class FeatureScaling {
public:
  FeatureScaling() = default;
  FeatureScaling(double sample_height, double nu) : h_over_nu_(sample_height / nu) {}

  // Model inputs of `scheme` from the solver's sampled velocity (`count` values).
  void inputs(FeatureScheme scheme, const double* velocity, float* model_inputs,
              std::size_t count) const {
    const double factor = scheme == FeatureScheme::wall_units ? h_over_nu_ : 1.0;
    for (std::size_t i = 0; i < count; ++i) model_inputs[i] = static_cast<float>(velocity[i] * factor);
  }
  // What a model prediction of `scheme` is multiplied with to give the kinematic wall stress.
  double stress_factor(FeatureScheme scheme) const {
    return scheme == FeatureScheme::wall_units ? 1.0 / (h_over_nu_ * h_over_nu_) : 1.0;
  }

private:
  double h_over_nu_ = 1.0;
};

} // namespace nekrs_ml
