// _core.keys: the C++ key schema (nekrs_ml/keys.hpp) and the protocol constants compiled into the
// library, so that tests compare them with nekrs_ml/keys.py and nekrs_ml/protocol.tsv.
#include "nekrs_ml/codec.hpp"
#include "nekrs_ml/keys.hpp"
#include "nekrs_ml/protocol.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;
using namespace nekrs_ml;

void bind_keys(py::module_& m) {
  py::module_ k = m.def_submodule("keys", "The key schema of docs/protocol.md as the C++ core writes it");
  k.def("rank_tag", &keys::rank_tag);
  k.def("snapshot_inputs", &keys::snapshot_inputs);
  k.def("snapshot_targets", &keys::snapshot_targets);
  k.def("snapshot_index", &keys::snapshot_index);
  k.def("snapshot_dropped", &keys::snapshot_dropped);
  k.def("snapshot_announced", &keys::snapshot_announced);
  k.def("inference_reply", &keys::inference_reply);
  k.def("worker_tag", &keys::worker_tag);
  k.def("inference_queue", &keys::inference_queue);
  k.def("worker_heartbeat", &keys::worker_heartbeat);
  k.def("holdout_inputs", &keys::holdout_inputs);
  k.def("holdout_targets", &keys::holdout_targets);
  k.def("solver_members", &keys::solver_members);
  k.def("solver_step", &keys::solver_step);
  k.def("solver_time", &keys::solver_time);
  k.def("solver_summary", &keys::solver_summary);
  k.def("solver_case", &keys::solver_case);
  k.def("solver_inference", &keys::solver_inference);
  k.def("flow_stats", &keys::flow_stats);
  k.def("solver_done", &keys::solver_done);
  k.def("trainer_stop", &keys::trainer_stop);
  k.def("trainer_alive", &keys::trainer_alive);
  k.def("trainer_status", &keys::trainer_status);
  k.def("model_tag", &keys::model_tag);
  k.def("model_latest", &keys::model_latest);
  k.def("model_meta", &keys::model_meta);
  k.def("model_weights", &keys::model_weights);
  k.def("model_package", &keys::model_package);
  k.def("package_state", &keys::package_state);
  k.attr("FLOW_STATS_RETAINED") = keys::kFlowStatsRetained;

  m.def(
      "protocol_dtypes",
      [] {
        std::vector<std::tuple<std::string, int, std::size_t>> rows;
#define NEKRS_ML_DTYPE_ROW(name, code, size, redisai, ctype) \
  rows.emplace_back(dtype_name(DType::name), code, dtype_size(DType::name));
        NKML_DTYPES(NEKRS_ML_DTYPE_ROW)
#undef NEKRS_ML_DTYPE_ROW
        return rows;
      },
      "(name, wire code, item size) of every dtype the library knows");
  m.def(
      "protocol_constants",
      [] {
        py::dict constants;
        constants["magic"] = std::string(kTensorMagic, sizeof kTensorMagic);
        constants["format_version"] = static_cast<int>(kFormatVersion);
        constants["max_rank"] = kMaxRank;
        constants["fixed_header_bytes"] = kFixedHeaderBytes;
        constants["flow_stats_retained"] = keys::kFlowStatsRetained;
        constants["default_namespace"] = std::string(NKML_KEY_DEFAULT_NAMESPACE);
        return constants;
      },
      "The tensor-header and key-schema constants the library was built with");
}
