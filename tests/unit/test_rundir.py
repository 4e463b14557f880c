"""Private files of a run directory that several processes create at once
(nekrs_ml.rundir.create_private: the password file the nodes of a co-located run share)."""

import multiprocessing
import os
import secrets
import stat
from pathlib import Path

from nekrs_ml import rundir
from nekrs_ml.redis_conf import check_password

RACERS, ROUNDS = 4, 150


def race(directory: str, barrier, tokens) -> None:
    """Each round: every racer creates the same new file at once, then reads it."""
    for round_ in range(ROUNDS):
        path = Path(directory, f"password{round_}")
        barrier.wait(timeout=60)
        rundir.create_private(path, secrets.token_hex(32) + "\n")
        try:
            tokens.put(check_password(rundir.read_private(path, "password file"), path))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            tokens.put(f"error: {exc}")


def test_racing_creators_all_read_one_whole_password(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, tokens = context.Barrier(RACERS), context.Queue()
    racers = [context.Process(target=race, args=(str(tmp_path), barrier, tokens))
              for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    read = [tokens.get(timeout=120) for _ in range(RACERS * ROUNDS)]
    for racer in racers:
        racer.join(timeout=30)
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    errors = [token for token in read if token.startswith("error")]
    assert not errors, f"{len(errors)} of {len(read)} reads: {errors[0]}"
    files = sorted(os.listdir(tmp_path))  # one file per round, nothing staged left behind
    assert files == sorted(f"password{round_}" for round_ in range(ROUNDS))
    for name in files:
        path = tmp_path / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_nlink == 1
    assert len(set(read)) == ROUNDS  # every racer of a round read the one winner's password


def test_an_existing_file_is_kept(tmp_path):
    path = tmp_path / "password"
    assert rundir.create_private(path, "a" * 32 + "\n")
    assert not rundir.create_private(path, "b" * 32 + "\n")
    assert path.read_text() == "a" * 32 + "\n" and os.listdir(tmp_path) == ["password"]
