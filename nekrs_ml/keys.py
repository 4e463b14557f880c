"""The key schema of docs/protocol.md (mirrored by udf/include/nekrs_ml/keys.hpp, which
tests/integration/test_contract_parity.py holds to the same keys; the constants come from protocol.tsv).

Every key starts with the run namespace. The part in braces is the Redis Cluster hash tag: all
keys of one solver rank share ``{<namespace>:r<rank>}`` and so live on one shard; the keys of one
model share ``{m:<name>}``.
"""

from __future__ import annotations

from . import protocol


def rank_tag(ns: str, rank: int) -> str:
    """The hash tag of one solver rank's keys: the namespace is part of it, so that in a Redis
    Cluster the ranks of different runs (ensemble members) spread over the masters
    independently."""
    return f"{{{ns}:r{int(rank)}}}"


# --- training stream (per solver rank) ------------------------------------------------------
def snapshot_inputs(ns: str, rank: int, seq: int) -> str:
    return f"{ns}:{rank_tag(ns, rank)}:train:{int(seq)}:x"


def snapshot_targets(ns: str, rank: int, seq: int) -> str:
    return f"{ns}:{rank_tag(ns, rank)}:train:{int(seq)}:y"


def snapshot_index(ns: str, rank: int) -> str:
    """List of announcements "<seq> <step> <time>", pushed after both tensors are stored."""
    return f"{ns}:{rank_tag(ns, rank)}:train:index"


def snapshot_dropped(ns: str, rank: int) -> str:
    """Counter of snapshots this rank dropped (retention limit reached or server full)."""
    return f"{ns}:{rank_tag(ns, rank)}:train:dropped"


def snapshot_announced(ns: str, rank: int) -> str:
    """Counter of snapshots this rank announced (progress), incremented in the snapshot's
    transaction."""
    return f"{ns}:{rank_tag(ns, rank)}:train:announced"


def stream_cursors(ns: str, rank: int) -> str:
    """Hash consumer -> the last SEQ of this rank that consumer has read (consumer groups)."""
    return f"{ns}:{rank_tag(ns, rank)}:train:cursors"


def stream_consumers(ns: str) -> str:
    """Set of the consumers (trainers) that read this training stream: an entry is removed
    only once every one of them has read it."""
    return f"{ns}:train:consumers"


# --- inference (docs/protocol.md, "Inference requests") ------------------------------------
def worker_tag(worker: int) -> str:
    return f"{{w{int(worker)}}}"


def inference_queue(ns: str, worker: int) -> str:
    """List of the requests waiting for model worker ``worker``."""
    return f"{ns}:{worker_tag(worker)}:infer:queue"


def worker_heartbeat(ns: str, worker: int) -> str:
    """JSON string with an expiry, refreshed by a live worker (pid, host, device, models)."""
    return f"{ns}:{worker_tag(worker)}:infer:alive"


def inference_reply(ns: str, rank: int, model: str) -> str:
    """List of the replies to solver rank ``rank`` for ``model``."""
    return f"{ns}:{rank_tag(ns, rank)}:infer:{model}:rep"


# --- run control ----------------------------------------------------------------------------
def solver_members(ns: str) -> str:
    """Set of the solver ranks that write to this server."""
    return f"{ns}:solver:members"


def solver_step(ns: str) -> str:
    return f"{ns}:solver:step"


def solver_time(ns: str) -> str:
    """Solution time of the last control step (progress)."""
    return f"{ns}:solver:time"


def solver_done(ns: str) -> str:
    return f"{ns}:solver:done"


def solver_summary(ns: str) -> str:
    """The solver's run summary (JSON, written by rank 0 of the coupling when it finishes)."""
    return f"{ns}:solver:summary"


def solver_case(ns: str) -> str:
    """What the trainer needs to know of the solver's case (JSON: kinematic_viscosity,
    sample_height, inputs, outputs, ranks), stored by the first solver rank of each node when
    its coupling starts (co-located: on every server); the trainer scales the samples with it."""
    return f"{ns}:solver:case"


def solver_inference(ns: str) -> str:
    """Rank 0's inference counters (JSON: version, calls, predicted, fallbacks, waiting_for),
    written with the step; the launcher's progress line shows them."""
    return f"{ns}:solver:inference"


def flow_stats(ns: str) -> str:
    """List of flow-statistics records (JSON: wall-parallel velocity moments and wall shear
    stress), pushed by the solver's rank 0 every statsInterval steps, drained by the launcher."""
    return f"{ns}:solver:stats"


#: records the solver keeps when nobody drains the list (protocol.tsv)
FLOW_STATS_RETAINED = protocol.KEY["flow_stats_retained"]


def holdout_inputs(ns: str, rank: int) -> str:
    """One held-out snapshot per rank (never announced): the a-priori test of the model."""
    return f"{ns}:{rank_tag(ns, rank)}:holdout:x"


def holdout_targets(ns: str, rank: int) -> str:
    return f"{ns}:{rank_tag(ns, rank)}:holdout:y"


def _trainer(ns: str, trainer) -> str:
    """The prefix of a trainer's control keys: NS:trainer, or NS:trainer:NAME for a named one
    (several trainers of one run: ``nekrs-ml train --consumer NAME``)."""
    return f"{ns}:trainer" if trainer is None else f"{ns}:trainer:{trainer}"


def trainer_stop(ns: str, trainer=None) -> str:
    return f"{_trainer(ns, trainer)}:stop"


def trainer_alive(ns: str, trainer=None) -> str:
    """Exists (expiring) while a trainer process lives: its heartbeat."""
    return f"{_trainer(ns, trainer)}:alive"


def trainer_status(ns: str, trainer=None) -> str:
    return f"{_trainer(ns, trainer)}:status"


# --- model registry -------------------------------------------------------------------------
def model_tag(name: str) -> str:
    return f"{{m:{name}}}"


def model_counter(ns: str, name: str) -> str:
    return f"{ns}:{model_tag(name)}:counter"


def model_latest(ns: str, name: str) -> str:
    return f"{ns}:{model_tag(name)}:latest"


def model_blob(ns: str, name: str, version: int) -> str:
    return f"{ns}:{model_tag(name)}:v{int(version)}"


def model_meta(ns: str, name: str, version: int) -> str:
    return f"{ns}:{model_tag(name)}:v{int(version)}:meta"


def model_export(ns: str, name: str, version: int) -> str:
    """The same version as a saved torch.export program (optional)."""
    return f"{ns}:{model_tag(name)}:v{int(version)}:export"


def model_weights(ns: str, name: str, version: int) -> str:
    """The weights of a torch.export version for in-process inference (nekrs_ml.models.aot)."""
    return f"{ns}:{model_tag(name)}:v{int(version)}:weights"


def model_package(ns: str, name: str, graph: str, device: str, torch_version: str) -> str:
    """The AOTInductor package of one graph of ``name`` for one device kind and torch version."""
    return f"{ns}:{model_tag(name)}:package:{graph}:{device}:{torch_version}"


def package_state(ns: str, name: str, graph: str, device: str, torch_version: str) -> str:
    """JSON state of the compilation of that package (compiling, failed, stopped), kept by
    ``nekrs-ml compile`` until the package exists; the in-process backend reports it."""
    return f"{ns}:{model_tag(name)}:compile:{graph}:{device}:{torch_version}"


def model_pinned(ns: str, name: str) -> str:
    """Set of the versions a rollback made current: kept when older versions are pruned."""
    return f"{ns}:{model_tag(name)}:pinned"


def model_names(ns: str) -> str:
    """Set of the model names registered in the run."""
    return f"{ns}:models"
