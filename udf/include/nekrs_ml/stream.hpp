// nekrs_ml::TrainingStream — a solver rank's side of the training stream (docs/protocol.md).
//
// Each snapshot is two tensors, inputs x [n, n_in] and targets y [n, n_out], stored under the
// rank's hash tag together with its announcement "SEQ STEP TIME" (pushed to the rank's index
// list) in one MULTI/EXEC transaction, so a trainer never sees a half-written snapshot. The
// transaction and the run's progress counter go out in one pipelined round trip; the retention
// check needs no round trip while the index length last seen is below the limit (only the
// trainer shortens the list meanwhile, so that length is an upper bound).
// At most max_snapshots announced snapshots are kept: beyond that the oldest is dropped, or
// the stream waits for the trainer to consume (when_full). A server at its maxmemory is
// handled the same way: a full database never makes put() throw, it drops data and says so
// in the result. Connection and timeout errors do propagate.
#pragma once

#include "nekrs_ml/client.hpp"
#include "nekrs_ml/codec.hpp"

#include <cstddef>
#include <optional>
#include <string>

namespace nekrs_ml {

class Config;

struct StreamOptions {
  enum class WhenFull { drop, wait };

  std::string ns = NKML_KEY_DEFAULT_NAMESPACE;
  int rank = 0;
  int sample_interval = 10;
  int max_snapshots = 20;
  WhenFull when_full = WhenFull::drop;
  double wait_timeout_s = 60.0;
  double poll_interval_s = 0.005; // longest pause between checks while waiting (from 0.1 ms, doubling)

  // The [NEKRS_ML] options namespace, sampleInterval, maxSnapshots, whenFull and waitTimeout.
  static StreamOptions from_config(const Config& config, int rank);
};

// "drop" or "wait"; throws ConfigError naming the valid choices.
StreamOptions::WhenFull when_full_from_name(const std::string& name);

struct PutResult {
  bool written = false;   // stored and announced
  bool dropped = false;   // given up: the database stayed full (nothing of it is left behind)
  int dropped_oldest = 0; // older snapshots of this rank removed to make room
  bool waited = false;    // waited for the trainer (when_full = wait)
  double seconds = 0.0;   // time spent in put()
  std::string warning;    // set when data was lost to a timeout or a full database
};

class TrainingStream {
public:
  // Registers the rank in the run's member set. Throws ConfigError for invalid options.
  TrainingStream(Client& client, StreamOptions options);

  // Whether `step` is a sampling step (step % sample_interval == 0).
  bool due(long step) const;

  // Stores and announces one snapshot. The headers must be [n, n_in] and [n, n_out] of the
  // same n and the same dtype, float32 or float64 (else ConfigError naming the shapes).
  PutResult put(long step, double time, const TensorHeader& inputs_header, const void* inputs,
                const TensorHeader& targets_header, const void* targets);

  template <typename T>
  PutResult put(long step, double time, std::size_t n, std::size_t n_in, const T* inputs,
                std::size_t n_out, const T* targets) {
    return put(step, time, TensorHeader{dtype_of<T>(), {n, n_in}}, inputs,
               TensorHeader{dtype_of<T>(), {n, n_out}}, targets);
  }

  long long snapshots_written() const { return written_; }
  // Snapshots of this rank lost without being consumed: old ones dropped to make room and
  // new ones given up. The same count is added to the server's counter (keys::snapshot_dropped).
  long long snapshots_dropped() const { return dropped_; }
  // SEQ of the next snapshot (counts the written ones from 0).
  long long next_seq() const { return seq_; }
  const StreamOptions& options() const { return options_; }

  // Marks the solver as finished (keys::solver_done); on a full server it retries for up to 30 s
  // while the trainer frees memory.
  static void mark_done(Client& client, const std::string& ns);
  // Whether the trainer asked the solver to stop (keys::trainer_stop exists).
  static bool stop_requested(Client& client, const std::string& ns);

private:
  void make_room(PutResult& result);
  bool store(long step, double time, const TensorHeader& inputs_header, const void* inputs,
             const TensorHeader& targets_header, const void* targets, PutResult& result);
  bool drop_oldest();
  bool try_write(long step, double time, const TensorHeader& inputs_header, const void* inputs,
                 const TensorHeader& targets_header, const void* targets);
  bool try_write_routed(const std::string& entry, const TensorHeader& inputs_header,
                        const void* inputs, const TensorHeader& targets_header,
                        const void* targets);
  void discard(long long seq);
  void count_dropped(long long count);
  // whenFull = wait: polls ready() until it holds (true), waitTimeout passes, or there is no
  // trainer left to wait for (false).
  template <typename Ready> bool wait_until(Ready ready, PutResult& result);
  bool worth_waiting(PutResult& result);

  Client& client_;
  StreamOptions options_;
  std::string index_key_;
  std::string dropped_key_;
  std::string announced_key_;
  // Upper bound of the index length (the length this stream last saw, plus its own pushes);
  // empty until first seen.
  std::optional<long long> index_length_;
  long long seq_ = 0;
  long long written_ = 0;
  long long dropped_ = 0;
  bool trainer_seen_ = false; // the trainer's heartbeat was there at some wait
  bool no_trainer_ = false;   // a whole wait passed without any trainer: do not wait again
};

} // namespace nekrs_ml
