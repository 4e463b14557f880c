// The wall-model BC hand-off: predicted wall shear stresses -> |tau| per wall node in one field
// of the user work array, which the boundary kernels read as bc->usrwrk (wall_model.okl).
//
// usrwrk layout: field `field` (default 0) holds |tau| at [field * fieldOffset + volume index]
// of every wall node; the other fields and entries are left to the case.
#pragma once

#include "nekrs_ml/nekrs/compat.hpp"
#include "nekrs_ml/wall_points.hpp"

#include <algorithm>
#include <cstddef>
#include <vector>

namespace nekrs_ml::nekrs {

class WallStressField {
public:
  // Makes usrwrk hold at least (field + 1) * fieldOffset values (keeping what it holds) and
  // sets this field to zero.
  WallStressField(nrs_t* nrs, int field) : nrs_(nrs), field_(field) {
    offset_ = static_cast<std::size_t>(compat::field_offset(nrs));
    deviceMemory<dfloat>& o_usrwrk = compat::usrwrk(nrs);
    const std::size_t needed = (static_cast<std::size_t>(field) + 1) * offset_;
    if (o_usrwrk.size() < needed) {
      std::vector<dfloat> keep(o_usrwrk.size());
      if (!keep.empty()) o_usrwrk.copyTo(keep, keep.size());
      keep.resize(needed, 0);
      o_usrwrk.resize(needed); // reallocates: the old contents come back from `keep`
      o_usrwrk.copyFrom(keep, needed);
    }
    values_.assign(offset_, 0.0);
    upload();
  }

  int field() const { return field_; }

  // Predictions [n][2] of the wall points -> |tau| of each wall node -> device.
  template <typename T> void set(const WallPoints& points, const T* predictions) {
    points.scatter(predictions, values_.data(), values_.size(), offset_, 0);
    upload();
  }

  // |tau| per wall point (e.g. a fallback estimate): stored as (|tau|, 0) predictions.
  void set_magnitudes(const WallPoints& points, const std::vector<double>& tau) {
    std::vector<double> pairs(2 * points.size(), 0.0);
    for (std::size_t i = 0; i < points.size(); ++i) pairs[2 * i] = tau[i];
    set(points, pairs.data());
  }

private:
  void upload() {
    host_.assign(values_.begin(), values_.end());
    compat::usrwrk(nrs_).copyFrom(host_, offset_, static_cast<std::size_t>(field_) * offset_);
  }

  nrs_t* nrs_;
  int field_;
  std::size_t offset_ = 0;
  std::vector<double> values_; // this field on the host (double: WallPoints' precision)
  std::vector<dfloat> host_;
};

} // namespace nekrs_ml::nekrs
