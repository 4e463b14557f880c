// The training stream of a solver rank (stream.hpp, docs/protocol.md "Training stream").
#include "nekrs_ml/stream.hpp"

#include "nekrs_ml/config.hpp"
#include "nekrs_ml/errors.hpp"
#include "nekrs_ml/keys.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>
#include <utility>

namespace nekrs_ml {
namespace {

using Clock = std::chrono::steady_clock;

// A waiting rank checks again after 0.1 ms, then twice as long each time up to poll_interval_s:
// a trainer that catches up quickly is noticed at once, a long wait costs few requests.
constexpr double kFirstPause = 1e-4; // s
constexpr double kHeartbeatCheck = 1.0; // s between checks of the trainer's heartbeat in a wait

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void sleep_seconds(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// A server at its maxmemory (policy noeviction) refuses writes with
// "OOM command not allowed when used memory > 'maxmemory'". The exact phrases are matched,
// not just "OOM", because the message also quotes the key, which may contain anything.
bool out_of_memory(const ServerError& error) {
  const std::string text = error.what();
  return text.find("OOM command not allowed") != std::string::npos ||
         text.find("> 'maxmemory'") != std::string::npos;
}

// Replies that a routed call retries (cluster redirects, a reconfiguring cluster, a loading
// server): the transaction is then redone through the routed path.
bool needs_routing(const std::string& error) {
  for (const char* prefix : {"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "LOADING"}) {
    if (error.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

std::string_view bytes_of(const void* data, std::size_t size) {
  return {static_cast<const char*>(data), size};
}

void add_warning(PutResult& result, const std::string& warning) {
  result.warning += (result.warning.empty() ? "" : "; ") + warning;
}

std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value); // round-trips exactly
  return text;
}

void check_snapshot(const TensorHeader& inputs, const TensorHeader& targets) {
  const auto shapes = [&] {
    return "inputs " + inputs.describe() + ", targets " + targets.describe();
  };
  if (inputs.shape.size() != 2 || targets.shape.size() != 2) {
    throw ConfigError("training snapshot: inputs must be [n, n_in] and targets [n, n_out], got " +
                      shapes());
  }
  if (inputs.shape[0] != targets.shape[0]) {
    throw ConfigError("training snapshot: inputs and targets must have the same number of "
                      "points n (first dimension), got " + shapes());
  }
  if (inputs.dtype != targets.dtype ||
      (inputs.dtype != DType::float32 && inputs.dtype != DType::float64)) {
    throw ConfigError("training snapshot: inputs and targets must both be float32 or both "
                      "float64, got " + shapes());
  }
}

StreamOptions checked(StreamOptions options) {
  const auto fail = [](const std::string& what) { throw ConfigError("TrainingStream: " + what); };
  if (options.ns.empty() || !keys::valid_namespace(options.ns)) {
    fail("namespace '" + options.ns + "' must be non-empty without '{', '}' or ':' "
         "([NEKRS_ML] namespace)");
  }
  if (options.rank < 0) fail("rank = " + std::to_string(options.rank) + ": must be >= 0");
  if (options.sample_interval < 1) {
    fail("sample_interval = " + std::to_string(options.sample_interval) +
         ": must be >= 1 ([NEKRS_ML] sampleInterval)");
  }
  if (options.max_snapshots < 1) {
    fail("max_snapshots = " + std::to_string(options.max_snapshots) +
         ": must be >= 1 ([NEKRS_ML] maxSnapshots)");
  }
  if (!(options.wait_timeout_s >= 0.0)) {
    fail("wait_timeout = " + format_number(options.wait_timeout_s) +
         " s: must be >= 0 ([NEKRS_ML] waitTimeout)");
  }
  if (!(options.poll_interval_s > 0.0)) {
    fail("poll_interval = " + format_number(options.poll_interval_s) + " s: must be > 0");
  }
  return options;
}

} // namespace

StreamOptions::WhenFull when_full_from_name(const std::string& name) {
  if (name == "drop") return StreamOptions::WhenFull::drop;
  if (name == "wait") return StreamOptions::WhenFull::wait;
  throw ConfigError("when_full = '" + name +
                    "' is not valid; use drop or wait ([NEKRS_ML] whenFull)");
}

StreamOptions StreamOptions::from_config(const Config& config, int rank) {
  StreamOptions options;
  options.ns = config.get_string("nekrs_ml", "namespace");
  options.rank = rank;
  options.sample_interval = static_cast<int>(config.get_int("nekrs_ml", "sampleInterval"));
  options.max_snapshots = static_cast<int>(config.get_int("nekrs_ml", "maxSnapshots"));
  options.when_full = when_full_from_name(config.get_string("nekrs_ml", "whenFull"));
  options.wait_timeout_s = config.get_double("nekrs_ml", "waitTimeout");
  return options;
}

TrainingStream::TrainingStream(Client& client, StreamOptions options)
    : client_(client), options_(checked(std::move(options))),
      index_key_(keys::snapshot_index(options_.ns, options_.rank)),
      dropped_key_(keys::snapshot_dropped(options_.ns, options_.rank)),
      announced_key_(keys::snapshot_announced(options_.ns, options_.rank)) {
  const std::string members = keys::solver_members(options_.ns);
  client_.command({"SADD", members, std::to_string(options_.rank)}, members);
}

bool TrainingStream::due(long step) const { return step % options_.sample_interval == 0; }

PutResult TrainingStream::put(long step, double time, const TensorHeader& inputs_header,
                              const void* inputs, const TensorHeader& targets_header,
                              const void* targets) {
  const auto start = Clock::now();
  check_snapshot(inputs_header, targets_header);
  PutResult result;
  make_room(result);
  result.written = store(step, time, inputs_header, inputs, targets_header, targets, result);
  result.dropped = !result.written;
  if (result.written) {
    ++seq_;
    ++written_;
  } else {
    count_dropped(1);
  }
  result.seconds = seconds_since(start);
  return result;
}

// Writes the snapshot; on a full server frees this rank's oldest snapshots (drop) or waits
// for the trainer to free memory (wait). Returns false when the snapshot was given up.
bool TrainingStream::store(long step, double time, const TensorHeader& inputs_header,
                           const void* inputs, const TensorHeader& targets_header,
                           const void* targets, PutResult& result) {
  const std::string full = "rank " + std::to_string(options_.rank) +
                           ": the database is full (maxmemory); ";
  int dropped = 0;
  bool written = true;
  std::optional<Clock::time_point> full_since;
  while (!try_write(step, time, inputs_header, inputs, targets_header, targets)) {
    if (options_.when_full == StreamOptions::WhenFull::drop && drop_oldest()) {
      ++dropped;
      continue;
    }
    if (options_.when_full == StreamOptions::WhenFull::wait) {
      full_since = Clock::now();
      if (wait_until([&] { return try_write(step, time, inputs_header, inputs, targets_header,
                                            targets); },
                     result)) {
        break;
      }
    }
    written = false;
    break;
  }
  result.dropped_oldest += dropped;
  count_dropped(dropped);
  if (!written) {
    add_warning(result, full + "the snapshot of step " + std::to_string(step) + " was dropped" +
                            (full_since ? " after waiting " +
                                              format_number(options_.wait_timeout_s) +
                                              " s (waitTimeout)"
                                        : "") +
                            "; raise maxMemory or lower maxSnapshots");
  } else if (dropped > 0) {
    add_warning(result, full + "dropped " + std::to_string(dropped) +
                            " older snapshot(s) to store the one of step " + std::to_string(step));
  }
  return written;
}

// Waiting helps only while a trainer can consume: one with a live heartbeat, or one that may
// still be starting (no heartbeat seen yet, and no whole wait has passed without one). A trainer
// that died or finished leaves no heartbeat, and the stream then drops at once instead of
// waiting waitTimeout for every snapshot.
bool TrainingStream::worth_waiting(PutResult& result) {
  if (client_.exists(keys::trainer_alive(options_.ns))) {
    trainer_seen_ = true;
    no_trainer_ = false;
    return true;
  }
  if (!trainer_seen_ && !no_trainer_) return true;
  add_warning(result, "rank " + std::to_string(options_.rank) + ": no trainer is running (its " +
                          "heartbeat " + keys::trainer_alive(options_.ns) + " is missing): " +
                          "not waiting (whenFull = wait)");
  return false;
}

template <typename Ready> bool TrainingStream::wait_until(Ready ready, PutResult& result) {
  if (!worth_waiting(result)) return false;
  result.waited = true;
  const auto start = Clock::now();
  auto checked = start;
  double pause = kFirstPause;
  while (seconds_since(start) < options_.wait_timeout_s) {
    sleep_seconds(std::min(pause, options_.poll_interval_s));
    pause *= 2;
    if (ready()) return true;
    if (seconds_since(checked) >= kHeartbeatCheck) {
      checked = Clock::now();
      if (!worth_waiting(result)) return false;
    }
  }
  if (!trainer_seen_) no_trainer_ = true;
  return false;
}

// Retention: at most max_snapshots announced snapshots, checked before writing a new one.
void TrainingStream::make_room(PutResult& result) {
  if (index_length_ && *index_length_ < options_.max_snapshots) return; // room without asking
  long long length = client_.list_length(index_key_);
  index_length_ = length;
  if (length < options_.max_snapshots) return;
  if (options_.when_full == StreamOptions::WhenFull::wait) {
    wait_until([&] {
      length = client_.list_length(index_key_);
      return length < options_.max_snapshots;
    }, result);
    index_length_ = length;
    if (length < options_.max_snapshots) return;
  }
  // The trainer only ever shortens the list meanwhile, so counting down is safe.
  int dropped = 0;
  for (; length >= options_.max_snapshots && drop_oldest(); --length) ++dropped;
  index_length_ = length;
  result.dropped_oldest += dropped;
  count_dropped(dropped);
  if (options_.when_full == StreamOptions::WhenFull::wait && dropped > 0) {
    add_warning(result, "rank " + std::to_string(options_.rank) +
                            ": the trainer consumed nothing within " +
                            format_number(options_.wait_timeout_s) + " s (waitTimeout) with " +
                            std::to_string(options_.max_snapshots) +
                            " snapshots pending (maxSnapshots); dropped the oldest");
  }
}

// Removes the oldest announced snapshot of this rank; false when there is none (the trainer
// may have consumed it meanwhile).
bool TrainingStream::drop_oldest() {
  const std::string entry = client_.command({"LPOP", index_key_}, index_key_);
  if (entry.empty()) return false;
  if (index_length_ && *index_length_ > 0) --*index_length_;
  discard(std::strtoll(entry.c_str(), nullptr, 10)); // entry = "SEQ STEP TIME"
  return true;
}

bool TrainingStream::try_write(long step, double time, const TensorHeader& inputs_header,
                               const void* inputs, const TensorHeader& targets_header,
                               const void* targets) {
  const std::string& ns = options_.ns;
  const std::string entry =
      std::to_string(seq_) + " " + std::to_string(step) + " " + format_number(time);
  const std::string inputs_key = keys::snapshot_inputs(ns, options_.rank, seq_);
  const std::string targets_key = keys::snapshot_targets(ns, options_.rank, seq_);
  const std::string inputs_head = encode_header(inputs_header);
  const std::string targets_head = encode_header(targets_header);
  const auto tensor_set = [](const std::string& key, const std::string& head, const void* data,
                             const TensorHeader& header) {
    return Command{key, {{"SET"}, {key}, {head, bytes_of(data, header.data_bytes())}}};
  };
  // All keys of the transaction carry the rank's hash tag: one shard, one round trip, and the
  // rank's progress counter counts exactly the announced snapshots.
  const std::vector<CommandReply> replies = client_.pipeline({
      Command::of(index_key_, {"MULTI"}),
      tensor_set(inputs_key, inputs_head, inputs, inputs_header),
      tensor_set(targets_key, targets_head, targets, targets_header),
      Command::of(index_key_, {"RPUSH", index_key_, entry}),
      Command::of(announced_key_, {"INCRBY", announced_key_, "1"}),
      Command::of(index_key_, {"EXEC"}),
  });
  const CommandReply& exec = replies.back();
  bool full = false;
  // The queued commands and EXEC itself: memory may run out, or a redirect come, at either.
  for (std::size_t i = 0; i < replies.size(); ++i) {
    if (!replies[i].is_error()) continue;
    const ServerError error("put snapshot '" + inputs_key + "': server error: " +
                            replies[i].text);
    if (needs_routing(replies[i].text)) {
      return try_write_routed(entry, inputs_header, inputs, targets_header, targets);
    }
    if (!out_of_memory(error) && replies[i].text.rfind("EXECABORT", 0) != 0) throw error;
    full = full || out_of_memory(error);
  }
  if (exec.is_error()) {
    if (!full) throw ServerError("put snapshot '" + inputs_key + "': server error: " + exec.text);
    discard(seq_); // nothing of the transaction was applied; clears anything left before
    return false;
  }
  if (exec.type != CommandReply::Type::array || exec.elements.size() != 4) {
    throw ServerError("put snapshot '" + inputs_key + "': unexpected reply to EXEC");
  }
  for (const CommandReply& element : exec.elements) {
    // e.g. WRONGTYPE: the index key holds something else (the tensors were stored meanwhile)
    if (element.is_error()) {
      throw ServerError("put snapshot '" + inputs_key + "': server error: " + element.text);
    }
  }
  if (exec.elements[2].type != CommandReply::Type::integer) {
    throw ServerError("put snapshot '" + inputs_key + "': unexpected reply to RPUSH");
  }
  index_length_ = exec.elements[2].integer;
  return true;
}

// The same writes through routed calls (which follow redirects and retry): used only when the
// pipelined transaction met a redirect or a reconfiguring cluster.
bool TrainingStream::try_write_routed(const std::string& entry, const TensorHeader& inputs_header,
                                      const void* inputs, const TensorHeader& targets_header,
                                      const void* targets) {
  const std::string& ns = options_.ns;
  try {
    client_.put_tensors({TensorView{keys::snapshot_inputs(ns, options_.rank, seq_), inputs_header,
                                    inputs},
                         TensorView{keys::snapshot_targets(ns, options_.rank, seq_),
                                    targets_header, targets}});
    // Announced only once both tensors are stored.
    index_length_ = client_.list_push(index_key_, entry);
  } catch (const ServerError& error) {
    if (!out_of_memory(error)) throw;
    discard(seq_); // never leave half a snapshot behind
    return false;
  }
  try {
    client_.increment(announced_key_, 1);
  } catch (const ServerError& error) {
    // The progress counter is informative only: a full server may refuse it.
    if (!out_of_memory(error)) throw;
  }
  return true;
}

// Deletes both tensors of snapshot `seq` (DEL is allowed on a full server).
void TrainingStream::discard(long long seq) {
  const std::string inputs = keys::snapshot_inputs(options_.ns, options_.rank, seq);
  client_.command({"DEL", inputs, keys::snapshot_targets(options_.ns, options_.rank, seq)}, inputs);
}

void TrainingStream::count_dropped(long long count) {
  if (count == 0) return;
  dropped_ += count;
  try {
    client_.command({"INCRBY", dropped_key_, std::to_string(count)}, dropped_key_);
  } catch (const ServerError& error) {
    // A full server refuses even INCRBY; the count stays in snapshots_dropped() and in the
    // warning of the put, and losing it on the server must not stop the solver.
    if (!out_of_memory(error)) throw;
  }
}

// A full server refuses even this small SET until the trainer has consumed something: retry
// for a while, since the trainer stops only once it sees the marker.
void TrainingStream::mark_done(Client& client, const std::string& ns) {
  constexpr double kFullServerPatience = 30.0; // s
  const auto start = Clock::now();
  for (;;) {
    try {
      client.set_string(keys::solver_done(ns), "1");
      return;
    } catch (const ServerError& error) {
      if (!out_of_memory(error) || seconds_since(start) > kFullServerPatience) throw;
    }
    sleep_seconds(0.05);
  }
}

bool TrainingStream::stop_requested(Client& client, const std::string& ns) {
  return client.exists(keys::trainer_stop(ns));
}

} // namespace nekrs_ml
