// Wall-parallel averaged flow statistics of a channel (walls normal to y): the solver's volume
// nodes binned into the planes y = const they lie on, and the weighted moments of the velocity
// per plane. The coupling sums them over the ranks every statsInterval steps and streams them
// to the database (docs/protocol.md, "Flow statistics"); the launcher averages them in time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nekrs_ml {

class Collective;

// Moments per plane, in this order: w, w u, w v, w w, w uu, w vv, w ww, w uv (w: the nodes'
// quadrature weights).
constexpr std::size_t kProfileMoments = 8;

class ProfileBinning {
public:
  // More distinct planes than this: the nodes do not lie on planes y = const (a curved or
  // unstructured mesh), and there is no profile.
  static constexpr std::size_t kMaxLevels = 4096;

  ProfileBinning() = default;
  // Collective (every rank, also one without nodes). y: this rank's node coordinates. The
  // planes are the distinct y of all ranks' nodes, merged within 1e-9 of the y extent.
  ProfileBinning(Collective& comm, const std::vector<double>& y);

  bool empty() const { return levels_.empty(); }
  // Why there is no profile ("" when there is one).
  const std::string& why_empty() const { return why_empty_; }
  // The planes' y, increasing; the same on every rank.
  const std::vector<double>& levels() const { return levels_; }
  std::size_t nodes() const { return level_of_.size(); }

  // Adds this rank's moments to sums [levels][kProfileMoments]. weights and the velocity
  // components u, v, w hold nodes() values each; non-finite velocities are left out.
  void add(const double* weights, const double* u, const double* v, const double* w,
           double* sums) const;

private:
  std::vector<double> levels_;
  std::vector<std::uint32_t> level_of_; // per node: its plane
  std::string why_empty_;
};

} // namespace nekrs_ml
