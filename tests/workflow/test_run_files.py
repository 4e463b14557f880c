"""What `nekrs-ml run` writes is written safely: the run directory is this user's and closed to
everyone else (like the servers' directories), an output is never written through a link
planted at its name or at a temporary name, and a full disk ends the run with a report
(status disk_full, naming the file system) and no half-written or partial file. Real servers,
real ranks, a real (small tmpfs) full disk."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nekrs_ml.models import model_file
from nekrs_ml.errors import DiskFullError
from nekrs_ml.orchestrator import Orchestrator
from nekrs_ml.train import checkpoints
from support.runs import assert_nothing_left, finish, no_servers_left, report, start_run, write_case
from support.waiting import wait_for


OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
PRECIOUS = b"someone else's file\n"


def plant_links(directory: Path, tmp_path: Path):
    """Links where the trainer writes its partial files, to files of the victim."""
    targets = []
    for name in ("wall_model.pt.partial", "checkpoints/checkpoint_5.pt.partial",
                 "report.json", "loss.png"):
        target = tmp_path / f"victim-{len(targets)}"
        target.write_bytes(PRECIOUS)
        link = directory / name
        link.parent.mkdir(exist_ok=True)
        os.symlink(target, link)
        targets.append(target)
    return targets


@pytest.mark.parametrize("owner,mode,expected", [
    pytest.param(OTHER_UID, 0o777, f"belongs to uid {OTHER_UID}", marks=as_root),
    (None, 0o777, "is writable by group or others (mode 777)"),
    (None, 0o775, "is writable by group or others (mode 775)"),
], ids=["other-user-0777", "ours-0777", "ours-0775"])
def test_a_run_directory_others_can_write_is_refused(run_dir, tmp_path, owner, mode, expected):
    shared = Path(run_dir) / "shared"
    shared.mkdir()
    targets = plant_links(shared, tmp_path)
    if owner is not None:
        os.chown(shared, owner, -1)
    os.chmod(shared, mode)
    case = write_case(run_dir, {"REPRODUCER": {"steps": 100}})
    code, out = finish(start_run(case, str(shared)), timeout=120)
    assert code == 2, out[-3000:]
    assert f"run directory {shared} {expected}" in out and "choose" in out, out
    for target in targets:
        assert target.read_bytes() == PRECIOUS
    assert not (shared / "db").exists() and not (shared / "run.lock").exists()
    assert stat.S_IMODE(os.lstat(shared).st_mode) == mode  # left as it was
    assert no_servers_left(str(shared))


def test_a_new_run_directory_is_private(run_dir):
    from nekrs_ml import rundir

    made = rundir.private_dir(Path(run_dir) / "runs" / "case")
    assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700


def test_outputs_are_never_written_through_a_planted_link(tmp_path):
    """Our own directory with links in place of the outputs and of the old fixed partial
    names (planted earlier, or left by a run of another version): each output replaces the
    link with a new regular file; no target changes; nothing partial is left."""
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    links = {}
    for name in ("wall_model.pt", "wall_model.pt.partial", "wall_model.json.partial",
                 "wall_model.pt2.partial", "trainer.json.partial",
                 "checkpoints/checkpoint_5.pt.partial", "checkpoints/checkpoint_5.pt"):
        target = victim / name.replace("/", "_")
        target.write_bytes(PRECIOUS)
        os.symlink(target, out / name)
        links[name] = target
    model_file.save(out / "wall_model.pt", b"model bytes", {"version": 1}, b"export bytes")
    checkpoints.save(out / "checkpoints", 5, {"model": {"w": torch.ones(2)},
                                              "input_stats": np.arange(3.0), "best": 0.5})
    from nekrs_ml.train.outputs import write_summary

    write_summary(out, {"state": "done"})
    for target in links.values():
        assert target.read_bytes() == PRECIOUS, target
    assert (out / "wall_model.pt").read_bytes() == b"model bytes"
    assert not (out / "wall_model.pt").is_symlink()
    saved = checkpoints.load_latest(out / "checkpoints")
    assert saved["input_stats"].tolist() == [0.0, 1.0, 2.0] and saved["best"] == 0.5
    assert not list(out.rglob(".*.partial"))


# --- a full disk ------------------------------------------------------------------------------
@pytest.fixture
def small_disk():
    """A 8 MiB tmpfs (root with mount(8) only); unmounted at the end whatever happens."""
    point = tempfile.mkdtemp(prefix="nkml-disk-", dir="/tmp")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", point],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        os.rmdir(point)
        pytest.skip(f"a small file system to fill needs mount -t tmpfs (root): {proc.stderr.strip()}")
    try:
        yield Path(point)
    finally:
        for directory in Path(point).rglob("db"):
            Orchestrator.stop_dir(directory)
        subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(point, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Writes a file until the disk is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * (64 << 10)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def test_model_files_and_checkpoints_on_a_full_disk(small_disk):
    filler = fill(small_disk)
    with pytest.raises(DiskFullError) as caught:
        model_file.save(small_disk / "wall_model.pt", b"m" * 100000, {"version": 1})
    assert f"writing {small_disk / 'wall_model.pt'}" in str(caught.value)
    assert f"mounted at {small_disk}" in str(caught.value) and "--run-dir" in str(caught.value)
    with pytest.raises(DiskFullError):
        checkpoints.save(small_disk / "checkpoints", 20, {"model": {"w": torch.ones(50000)}})
    filler.unlink()
    assert sorted(p.name for p in small_disk.rglob("*")) == ["checkpoints"]  # nothing partial


def test_a_disk_that_fills_up_ends_the_run_with_a_report(small_disk):
    run_dir = small_disk / "run"
    run_dir.mkdir(mode=0o700)
    case = write_case(str(small_disk), {"REPRODUCER": {"steps": 500, "stepCost": 0.02}})
    proc = start_run(case, str(run_dir))
    try:
        wait_for(lambda: (run_dir / "trainer_history.jsonl").exists(), 120, "the trainer to start")
        fill(small_disk)
        code, out = finish(proc, timeout=180)
        stopped = __import__("time").monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    data = report(str(run_dir))
    assert data["status"] == "disk_full" and code == 7, out[-3000:]
    assert "no space left on device" in data["message"], data["message"]
    assert f"mounted at {small_disk}" in data["message"] and "--run-dir" in data["message"]
    assert "nekrs-ml run: disk_full" in out
    for warning in data["warnings"]:  # a trainer that failed while the solver ran: said why
        if "trainer exited" in warning:
            assert "no space left on device" in warning, warning
    assert not list(run_dir.rglob("*.partial"))  # no partial file, under any name
    assert not (run_dir / "solver.json").exists() or (run_dir / "solver.json").stat().st_size
    assert not (run_dir / ".report-reserve").exists()
    assert_nothing_left(str(run_dir), stopped)
