// The key schema of docs/protocol.md (mirrored by nekrs_ml/keys.py; tests/integration/test_contract_parity.py
// checks that both write the same keys, through nekrs_ml._core.keys).
#pragma once

#include "nekrs_ml/protocol.h"

#include <string>

namespace nekrs_ml::keys {

// A namespace is a key prefix: '{' or '}' would change the keys' hash tags, ':' their fields.
inline bool valid_namespace(const std::string& ns) {
  return ns.find_first_of("{}:") == std::string::npos;
}

// The hash tag of one solver rank's keys: the namespace is part of it, so that in a Redis
// Cluster the ranks of different runs (ensemble members) spread over the masters independently.
inline std::string rank_tag(const std::string& ns, int rank) {
  return "{" + ns + ":r" + std::to_string(rank) + "}";
}

inline std::string snapshot_inputs(const std::string& ns, int rank, long long seq) {
  return ns + ":" + rank_tag(ns, rank) + ":train:" + std::to_string(seq) + ":x";
}
inline std::string snapshot_targets(const std::string& ns, int rank, long long seq) {
  return ns + ":" + rank_tag(ns, rank) + ":train:" + std::to_string(seq) + ":y";
}
inline std::string snapshot_index(const std::string& ns, int rank) {
  return ns + ":" + rank_tag(ns, rank) + ":train:index";
}
inline std::string snapshot_dropped(const std::string& ns, int rank) {
  return ns + ":" + rank_tag(ns, rank) + ":train:dropped";
}
inline std::string snapshot_announced(const std::string& ns, int rank) {
  return ns + ":" + rank_tag(ns, rank) + ":train:announced";
}
// Inference: rank R reads its replies from its own list; worker W serves one queue.
inline std::string inference_reply(const std::string& ns, int rank, const std::string& model) {
  return ns + ":" + rank_tag(ns, rank) + ":infer:" + model + ":rep";
}
inline std::string worker_tag(int worker) { return "{w" + std::to_string(worker) + "}"; }
inline std::string inference_queue(const std::string& ns, int worker) {
  return ns + ":" + worker_tag(worker) + ":infer:queue";
}
inline std::string worker_heartbeat(const std::string& ns, int worker) {
  return ns + ":" + worker_tag(worker) + ":infer:alive";
}
// One held-out snapshot per rank, written at the end of a training run and never announced:
// the launcher's a-priori test of the published model.
inline std::string holdout_inputs(const std::string& ns, int rank) {
  return ns + ":" + rank_tag(ns, rank) + ":holdout:x";
}
inline std::string holdout_targets(const std::string& ns, int rank) {
  return ns + ":" + rank_tag(ns, rank) + ":holdout:y";
}
inline std::string solver_members(const std::string& ns) { return ns + ":solver:members"; }
inline std::string solver_step(const std::string& ns) { return ns + ":solver:step"; }
inline std::string solver_time(const std::string& ns) { return ns + ":solver:time"; }
inline std::string solver_summary(const std::string& ns) { return ns + ":solver:summary"; }
// What the trainer needs to know of this solver's case (JSON: kinematic_viscosity,
// sample_height, inputs, outputs, ranks), stored by the first rank of each node when the
// coupling starts (co-located: on every server).
inline std::string solver_case(const std::string& ns) { return ns + ":solver:case"; }
// Rank 0's inference counters (JSON: version, calls, predicted, fallbacks, waiting_for),
// written with the step for the launcher's progress line.
inline std::string solver_inference(const std::string& ns) { return ns + ":solver:inference"; }
// List of flow-statistics records (JSON), pushed by the solver's rank 0, drained by the launcher.
inline std::string flow_stats(const std::string& ns) { return ns + ":solver:stats"; }
// Records kept when nobody drains the list (nekrs_ml/protocol.tsv).
constexpr long long kFlowStatsRetained = NKML_KEY_FLOW_STATS_RETAINED;
inline std::string solver_done(const std::string& ns) { return ns + ":solver:done"; }
inline std::string trainer_stop(const std::string& ns) { return ns + ":trainer:stop"; }
inline std::string trainer_alive(const std::string& ns) { return ns + ":trainer:alive"; }
inline std::string trainer_status(const std::string& ns) { return ns + ":trainer:status"; }
// Model registry (the parts the in-process backend reads; nekrs_ml/models/registry.py writes them).
inline std::string model_tag(const std::string& name) { return "{m:" + name + "}"; }
inline std::string model_latest(const std::string& ns, const std::string& name) {
  return ns + ":" + model_tag(name) + ":latest";
}
inline std::string model_meta(const std::string& ns, const std::string& name,
                              unsigned long long version) {
  return ns + ":" + model_tag(name) + ":v" + std::to_string(version) + ":meta";
}
inline std::string model_weights(const std::string& ns, const std::string& name,
                                 unsigned long long version) {
  return ns + ":" + model_tag(name) + ":v" + std::to_string(version) + ":weights";
}
inline std::string model_package(const std::string& ns, const std::string& name,
                                 const std::string& graph, const std::string& device,
                                 const std::string& torch_version) {
  return ns + ":" + model_tag(name) + ":package:" + graph + ":" + device + ":" + torch_version;
}
// JSON state of the compilation of that package (compiling, failed, stopped), kept by
// `nekrs-ml compile` until the package exists.
inline std::string package_state(const std::string& ns, const std::string& name,
                                 const std::string& graph, const std::string& device,
                                 const std::string& torch_version) {
  return ns + ":" + model_tag(name) + ":compile:" + graph + ":" + device + ":" + torch_version;
}

} // namespace nekrs_ml::keys
