// Wall-parallel profiles (flow_stats.hpp).
#include "nekrs_ml/flow_stats.hpp"

#include "nekrs_ml/coupling.hpp"

#include <algorithm>
#include <cmath>

namespace nekrs_ml {
namespace {

constexpr double kMergeTolerance = 1e-9; // relative to the y extent

// Sorted values, those closer than `tolerance` to the previous kept one merged into it.
std::vector<double> distinct(std::vector<double> values, double tolerance) {
  std::sort(values.begin(), values.end());
  std::vector<double> kept;
  for (const double value : values) {
    if (kept.empty() || value - kept.back() > tolerance) kept.push_back(value);
  }
  return kept;
}

double extent(const std::vector<double>& sorted) {
  return sorted.empty() ? 0.0 : sorted.back() - sorted.front();
}

} // namespace

ProfileBinning::ProfileBinning(Collective& comm, const std::vector<double>& y) {
  bool finite = true;
  for (const double value : y) finite = finite && std::isfinite(value);
  std::vector<double> local;
  if (finite) {
    local = distinct(y, 0.0);
    local = distinct(local, kMergeTolerance * extent(local));
  }
  // Gather every rank's planes with sums only (the collective has no gather): each rank's
  // count at its index, then each rank's values at its offset.
  const std::size_t ranks = static_cast<std::size_t>(comm.size());
  const std::size_t rank = static_cast<std::size_t>(comm.rank());
  std::vector<double> counts(ranks + 1, 0.0);
  const bool too_many = local.size() > kMaxLevels;
  counts[rank] = too_many ? 0.0 : static_cast<double>(local.size());
  counts[ranks] = (too_many ? 1.0 : 0.0) + (finite ? 0.0 : 2.0 * ranks); // flags
  comm.sum(counts.data(), counts.size());
  if (counts[ranks] >= 2.0 * ranks) {
    why_empty_ = "a node coordinate y is not finite";
    return;
  }
  if (counts[ranks] > 0) {
    why_empty_ = "the nodes lie on more than " + std::to_string(kMaxLevels) +
                 " planes y = const (the mesh is not a channel mesh of planes y = const)";
    return;
  }
  std::size_t offset = 0, total = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    if (r < rank) offset += static_cast<std::size_t>(counts[r]);
    total += static_cast<std::size_t>(counts[r]);
  }
  std::vector<double> all(total, 0.0);
  std::copy(local.begin(), local.end(), all.begin() + static_cast<std::ptrdiff_t>(offset));
  comm.sum(all.data(), all.size());
  const std::vector<double> sorted = distinct(all, 0.0);
  levels_ = distinct(sorted, kMergeTolerance * extent(sorted));
  if (levels_.size() > kMaxLevels) {
    levels_.clear();
    why_empty_ = "the nodes lie on more than " + std::to_string(kMaxLevels) +
                 " planes y = const (the mesh is not a channel mesh of planes y = const)";
    return;
  }
  if (levels_.empty()) {
    why_empty_ = "the solver has no volume nodes";
    return;
  }
  // each node to the nearest plane
  level_of_.resize(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) {
    const auto above = std::lower_bound(levels_.begin(), levels_.end(), y[i]);
    std::size_t index = static_cast<std::size_t>(above - levels_.begin());
    if (index == levels_.size() || (index > 0 && y[i] - levels_[index - 1] < *above - y[i])) {
      --index;
    }
    level_of_[i] = static_cast<std::uint32_t>(index);
  }
}

void ProfileBinning::add(const double* weights, const double* u, const double* v,
                         const double* w, double* sums) const {
  for (std::size_t i = 0; i < level_of_.size(); ++i) {
    if (!std::isfinite(u[i]) || !std::isfinite(v[i]) || !std::isfinite(w[i])) continue;
    double* s = sums + kProfileMoments * level_of_[i];
    const double weight = weights[i];
    s[0] += weight;
    s[1] += weight * u[i];
    s[2] += weight * v[i];
    s[3] += weight * w[i];
    s[4] += weight * u[i] * u[i];
    s[5] += weight * v[i] * v[i];
    s[6] += weight * w[i] * w[i];
    s[7] += weight * u[i] * v[i];
  }
}

} // namespace nekrs_ml
