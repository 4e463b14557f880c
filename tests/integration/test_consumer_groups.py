"""Consumer groups and several streams of the trainer's reader (nekrs_ml.train.data) against a
real redis-server: every consumer sees every snapshot, an entry goes once the whole group read
it, a stopped consumer holds entries until the retention limit and then counts what it missed,
and a group of one consumes what it reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nekrs_ml
from nekrs_ml import keys
from nekrs_ml.train.data import SnapshotReader, Stream
from support.ensembles import write_snapshot
from support.training import (StreamingSolver, fresh_namespace, log_of, trainer_env,
                              write_par)

RANKS = 2


def write_round(client, ns: str, seq: int, keep=None) -> None:
    """Snapshot ``seq`` of every rank (inputs hold seq, so a test can tell them apart)."""
    for rank in range(RANKS):
        inputs = np.full((4, 3), float(seq), dtype=np.float32)
        write_snapshot(client, ns, rank, seq, inputs, np.ones((4, 2), dtype=np.float32),
                       keep=keep)


def register_ranks(client, ns: str) -> None:
    members = keys.solver_members(ns)
    client.command(["SADD", members, *[str(r) for r in range(RANKS)]], key=members)


def register_consumers(client, ns: str, *names: str) -> None:
    """What the launcher does before the solvers start."""
    group = keys.stream_consumers(ns)
    client.command(["SADD", group, *names], key=group)


def stored(client, ns: str) -> list:
    """(rank, seq) of every announced entry still in the database, with both tensors."""
    present = []
    for rank in range(RANKS):
        for entry in client.command(["LRANGE", keys.snapshot_index(ns, rank), "0", "-1"],
                                    key=keys.snapshot_index(ns, rank)) or []:
            seq = int(entry.split()[0])
            assert client.exists(keys.snapshot_inputs(ns, rank, seq))
            present.append((rank, seq))
    return sorted(present)


def seen(snapshots) -> list:
    for s in snapshots:  # each tensor is the one of its own announcement
        assert (s.inputs == s.seq).all()
    return sorted((s.rank, s.seq) for s in snapshots)


def every(seqs) -> list:
    return sorted((rank, seq) for rank in range(RANKS) for seq in seqs)


def test_two_consumers_each_see_every_snapshot(server):
    client = nekrs_ml.Client(**server.client_args())
    ns = fresh_namespace()
    register_ranks(client, ns)
    register_consumers(client, ns, "small", "large")
    small = SnapshotReader(client, ns, 0, 1, consumer="small")
    large = SnapshotReader(client, ns, 0, 1, consumer="large")
    for seq in range(5):
        write_round(client, ns, seq)
    assert seen(small.read_available()) == every(range(5))
    assert small.read_available() == []  # nothing twice
    assert stored(client, ns) == every(range(5))  # "large" has not read them yet
    assert seen(large.read_available()) == every(range(5))
    assert stored(client, ns) == []  # read by the whole group: removed
    for seq in range(5, 8):
        write_round(client, ns, seq)
    assert seen(large.read_available()) == every(range(5, 8))
    assert stored(client, ns) == every(range(5, 8))
    assert seen(small.read_available()) == every(range(5, 8))
    assert stored(client, ns) == []
    cursors = client.pipeline([("HGETALL", keys.stream_cursors(ns, 1))])[0]
    if not isinstance(cursors, dict):  # a flat reply: field, value, field, value...
        cursors = dict(zip(cursors[0::2], cursors[1::2]))
    assert cursors == {b"small": b"7", b"large": b"7"}
    for reader in (small, large):
        assert reader.streams["solver"].dropped == 0 and not reader.skips.counts


def test_a_stopped_consumer_holds_entries_until_the_limit_then_counts_its_drops(server):
    """Consumer "stopped" reads snapshots 0-1 and stops; "going" reads on. The entries stay
    for "stopped" until the solver's retention limit (keep = 4) drops the oldest; "going" sees
    every one, "stopped" later finds the newest four and counts 4..9 minus those as dropped."""
    client = nekrs_ml.Client(**server.client_args())
    ns = fresh_namespace()
    register_ranks(client, ns)
    register_consumers(client, ns, "going", "stopped")
    going = SnapshotReader(client, ns, 0, 1, consumer="going")
    stopped = SnapshotReader(client, ns, 0, 1, consumer="stopped")
    read_by_going = []
    for seq in range(2):
        write_round(client, ns, seq, keep=4)
        read_by_going += seen(going.read_available())
    assert seen(stopped.read_available()) == every(range(2))
    assert stored(client, ns) == []
    for seq in range(2, 12):
        write_round(client, ns, seq, keep=4)
        read_by_going += seen(going.read_available())
        # held for "stopped" (its cursor is 1), at most keep = 4 a rank
        assert stored(client, ns) == every(range(max(2, seq - 3), seq + 1))
    assert sorted(read_by_going) == every(range(12))
    assert going.streams["solver"].dropped == 0
    assert seen(stopped.read_available()) == every(range(8, 12))
    assert stopped.streams["solver"].dropped == RANKS * 6  # seq 2..7 of each rank
    assert stored(client, ns) == []


def test_a_registered_consumer_without_a_cursor_holds_everything(server):
    """A launcher registers both consumers before the solvers start; until "late" has read
    anything, nothing is removed."""
    client = nekrs_ml.Client(**server.client_args())
    ns = fresh_namespace()
    register_ranks(client, ns)
    register_consumers(client, ns, "early", "late")
    early = SnapshotReader(client, ns, 0, 1, consumer="early")
    for seq in range(3):
        write_round(client, ns, seq)
        early.read_available()
    assert stored(client, ns) == every(range(3))
    late = SnapshotReader(client, ns, 0, 1, consumer="late")
    late.join()  # already a member: no change
    assert seen(late.read_available()) == every(range(3)) and stored(client, ns) == []


def test_a_group_of_one_consumes_what_it_reads(server):
    """No group registered (the single trainer of today) or a group of just this trainer:
    every snapshot read is removed at once, index entry and tensors."""
    client = nekrs_ml.Client(**server.client_args())
    for join in (False, True):
        ns = fresh_namespace()
        register_ranks(client, ns)
        reader = SnapshotReader(client, ns, 0, 1, consumer="only")
        if join:
            reader.join()
            assert client.command(["SMEMBERS", keys.stream_consumers(ns)],
                                  key=keys.stream_consumers(ns)) == {b"only"}
        for seq in range(3):
            write_round(client, ns, seq)
            assert seen(reader.read_available()) == every([seq])
            assert stored(client, ns) == []
            assert not client.exists(keys.snapshot_targets(ns, 1, seq))
        assert not client.exists(keys.stream_cursors(ns, 0))  # nothing left behind


def test_several_streams_are_read_together_and_named(server):
    client = nekrs_ml.Client(**server.client_args())
    run = fresh_namespace()
    streams = [Stream("re550", f"{run}.re550"), Stream("re950", f"{run}.re950")]
    for stream in streams:
        register_ranks(client, stream.ns)
    for seq in range(3):
        write_round(client, streams[0].ns, seq)
    write_round(client, streams[1].ns, 0)
    reader = SnapshotReader(client, run, 0, 1, consumer="wall_model", streams=streams)
    reader.join()
    got = reader.read_available()
    by_stream = {name: seen([s for s in got if s.stream == name]) for name in ("re550", "re950")}
    assert by_stream == {"re550": every(range(3)), "re950": every([0])}
    for stream in streams:
        assert stored(client, stream.ns) == []
        assert client.command(["SMEMBERS", keys.stream_consumers(stream.ns)],
                              key=keys.stream_consumers(stream.ns)) == {b"wall_model"}


@pytest.mark.slow  # two trainers under mpiexec
def test_two_trainers_of_one_stream_each_train_on_every_snapshot(tcp_server, run_dir):
    """Two `nekrs-ml train --consumer` processes (registered before the solver starts, as the
    launcher does) on one stream: each consumes every snapshot, each reports in its own status
    key, and once both have read them the snapshots are gone."""
    client = nekrs_ml.Client(**tcp_server.client_args())
    ns = fresh_namespace()
    register_consumers(client, ns, "first", "second")
    par = write_par(run_dir, maxEpochs=100000)
    env = trainer_env(tcp_server, ns)
    processes = {}
    for name in ("first", "second"):
        directory = Path(run_dir, name)
        directory.mkdir()
        with open(directory / "trainer.log", "wb") as log:
            processes[name] = subprocess.Popen(
                ["mpiexec", "-n", "1", sys.executable, "-m", "nekrs_ml.cli", "train", par,
                 "--run-dir", str(directory), "--data-timeout", "60", "--consumer", name],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
    solver = StreamingSolver(tcp_server.client_args(), ns, duration=6.0, keep=1000)
    try:
        deadline = time.monotonic() + 90
        while not all(client.exists(keys.trainer_status(ns, n)) for n in processes):
            assert time.monotonic() < deadline, "the trainers did not report within 90 s"
            assert all(p.poll() is None for p in processes.values())
            time.sleep(0.2)
        solver.start()
        codes = {name: p.wait(timeout=120) for name, p in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        solver.halted.set()
        solver.join(timeout=30)
    logs = {n: log_of(str(Path(run_dir, n))) for n in processes}
    assert codes == {"first": 0, "second": 0}, logs
    assert solver.error is None and solver.written > 20
    for name in processes:
        status = json.loads(client.get_string(keys.trainer_status(ns, name)))
        assert status["consumer"] == name and status["state"] == "done", logs[name]
        assert status["snapshots"] == solver.written, (name, status["snapshots"], solver.written)
        assert status["dropped"] == 0 and status["members"]["solver"]["dropped"] == 0
        assert status["members"]["solver"]["snapshots"] == solver.written
    assert not client.exists(keys.trainer_status(ns))
    assert stored(client, ns) == [] and not list(client.redis.scan_iter(match=f"{ns}:*:train:*:x"))


def test_stream_options_are_checked():
    from nekrs_ml.errors import ConfigError
    from nekrs_ml.train.settings import parse_streams

    assert parse_streams([], "run") == (Stream("solver", "run"),)
    assert parse_streams(["re550=run.re550", "re950=run.re950"], "run") == (
        Stream("re550", "run.re550"), Stream("re950", "run.re950"))
    for bad, message in (("re550", "expected NAME=NAMESPACE"), ("=run.x", "expected NAME"),
                         ("a=run:x", "not a valid namespace"), ("a:b=run.x", "without")):
        with pytest.raises(ConfigError, match=message):
            parse_streams([bad], "run")
    with pytest.raises(ConfigError, match="given twice"):
        parse_streams(["a=run.a", "a=run.b"], "run")


def test_mini_batches_draw_from_the_members_as_member_sampling_says():
    """balanced: the same rows from each member with data, however many each holds;
    proportional: as many as each holds."""
    from nekrs_ml.train.data import Members, Snapshot

    members = Members(["small", "large", "empty"], capacity=10000, validation_capacity=10,
                      period=None)
    for stream, rows, value in (("small", 100, 1.0), ("large", 900, 2.0)):
        members.add(Snapshot(0, 1, 0, 0.0, np.full((rows, 1), value), np.zeros((rows, 1)),
                             stream))
    rng = np.random.default_rng(0)
    inputs, _ = members.sample(rng, 1000, "balanced")
    assert len(inputs) == 1000 and (inputs == 1.0).sum() == 500
    shares = [(members.sample(rng, 1000, "proportional")[0] == 1.0).mean() for _ in range(20)]
    assert 0.07 < np.mean(shares) < 0.13
    assert members.train_rows == 1000 and members.dims == (1, 1) and members.snapshots == 2
