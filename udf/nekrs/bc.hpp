// The wall-model BC hand-off: the wall shear stress the coupling applies, [tau.t1, tau.t2] per
// wall point in NekRS's face frame -> two fields of the user work array, which the boundary
// kernels read as bc->usrwrk (wall_model.okl).
//
// usrwrk layout (field F = `field`, NEKRS_ML_USRWRK_FIELD, default 0):
//   [ F      * fieldOffset + volume index]  tau.t1 of the wall node
//   [(F + 1) * fieldOffset + volume index]  tau.t2 of the wall node
// tau is the stress the fluid exerts on the wall (docs/nekrs.md); the BC applies -tau to the
// fluid. Entries of other nodes are zero; the other fields are left to the case.
#pragma once

#include "nekrs_ml/nekrs/compat.hpp"
#include "nekrs_ml/wall_points.hpp"

#include <cstddef>
#include <vector>

namespace nekrs_ml::nekrs {

class WallStressField {
public:
  static constexpr int components = 2; // tau.t1, tau.t2: fields F and F + 1

  // Makes usrwrk hold at least (field + 2) * fieldOffset values (keeping what it holds) and
  // sets both fields to zero.
  WallStressField(nrs_t* nrs, int field) : nrs_(nrs), field_(field) {
    offset_ = static_cast<std::size_t>(compat::field_offset(nrs));
    deviceMemory<dfloat>& o_usrwrk = compat::usrwrk(nrs);
    const std::size_t needed = (static_cast<std::size_t>(field) + components) * offset_;
    if (o_usrwrk.size() < needed) {
      std::vector<dfloat> keep(o_usrwrk.size());
      if (!keep.empty()) o_usrwrk.copyTo(keep, keep.size());
      keep.resize(needed, 0);
      o_usrwrk.resize(needed); // reallocates: the old contents come back from `keep`
      o_usrwrk.copyFrom(keep, needed);
    }
    values_.assign(components * offset_, 0.0);
    upload();
  }

  int field() const { return field_; }

  // Stresses [n][2] = [tau.t1, tau.t2] of the wall points -> both fields of each wall node
  // (local field c of values_ holds component c) -> device.
  template <typename T> void set(const WallPoints& points, const T* stress) {
    for (int c = 0; c < components; ++c) {
      points.scatter(stress, c, values_.data(), values_.size(), offset_, c);
    }
    upload();
  }

private:
  void upload() {
    host_.assign(values_.begin(), values_.end());
    compat::usrwrk(nrs_).copyFrom(host_, host_.size(), static_cast<std::size_t>(field_) * offset_);
  }

  nrs_t* nrs_;
  int field_;
  std::size_t offset_ = 0;
  std::vector<double> values_; // both fields on the host (double: WallPoints' precision)
  std::vector<dfloat> host_;
};

} // namespace nekrs_ml::nekrs
