"""A run directory's files are trusted only when this user made them.

Another local user must not be able to plant a password, a server configuration or a state
file that the orchestrator then uses, and two live runs must never share a directory:

- ``private_dir``: the directory is ours and closed to everyone else (0700);
- ``write_private``: a file is written whole under a fresh name (0600) and renamed in place;
- ``read_private``: a file is read only when it is ours, closed to others and not a link;
- ``RunLock``: an exclusive flock on a file in the directory, held by the live run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Optional

from .errors import OrchestratorError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
MAX_PRIVATE_BYTES = 1 << 20  # what we write there is small; refuse to read anything larger


def private_dir(path: Path) -> Path:
    """Creates ``path`` (0700) or checks that the existing one belongs to this user; closes it
    to group and others either way."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OrchestratorError(f"{path} is not a directory (a link?); choose another run directory")
    if info.st_uid != os.geteuid():
        raise OrchestratorError(
            f"run directory {path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): "
            "its files could have been planted; choose a directory of your own")
    if info.st_mode & 0o022:
        raise OrchestratorError(
            f"run directory {path} is writable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):o}): anything in it could have been planted; choose a "
            "new directory (or check its files, then chmod 700 it)")
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def check_ours(path: Path, what: str) -> None:
    """An existing file the server will load (cluster state, persisted data) must be ours and
    writable by no one else; a missing one is fine."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
    elif info.st_mode & 0o022:
        problem = f"has mode {stat.S_IMODE(info.st_mode):o}: group or others may write it"
    else:
        return
    raise OrchestratorError(f"{what} {path} {problem}: it may have been planted; remove it")


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to a new 0600 file and renames it over ``path`` (never through a link
    and never leaving a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_private(path: Path, text: str) -> bool:
    """Creates ``path`` (0600) with ``text`` unless it exists; True when this call created it.
    Several processes may race for it (nodes of a colocated run): one wins, the others read."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return True


def read_private(path: Path, what: str) -> str:
    """The text of a file this user owns, that group and others cannot read or write and that
    is not a link; anything else is refused with what to do."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OrchestratorError(f"{what} {path} is a symbolic link; remove it (a new one is "
                                    "created at start)") from None
        raise OrchestratorError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())  # the file actually opened, not the name
        problem = _ownership_problem(info)
        if problem:
            raise OrchestratorError(
                f"{what} {path} {problem}: it may have been planted by someone else; remove it "
                "(a new one is created at start) or fix it (chown to you, chmod 600)")
        data = handle.read(MAX_PRIVATE_BYTES + 1)
    if len(data) > MAX_PRIVATE_BYTES:
        raise OrchestratorError(f"{what} {path} is larger than {MAX_PRIVATE_BYTES} bytes; remove it")
    return data.decode("utf-8", errors="replace")


def _ownership_problem(info: os.stat_result) -> Optional[str]:
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
    if info.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):o}: group or others may read or write it"
    return None


class RunLock:
    """An exclusive flock on ``path``: taken without waiting, held until ``release`` (or until
    every process holding the open file exits, e.g. the servers it was passed to)."""

    def __init__(self, path: Path, what: str, hint: str = "wait for it to end, stop it, or "
                 "choose another directory"):
        self.path = Path(path)
        self.what = what  # e.g. "run directory /x", for the message of whoever is refused
        self.hint = hint
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OrchestratorError(
                f"{self.what} is in use by a live run{f' ({holder})' if holder else ''}; "
                f"{self.hint}") from None
        problem = _ownership_problem(os.fstat(fd))
        if problem:
            os.close(fd)
            raise OrchestratorError(f"lock file {self.path} {problem}; remove it, or choose a "
                                    "directory of your own")
        self.fd = fd
        self.note(f"pid {os.getpid()}")
        return self

    def note(self, holder: str) -> None:
        """Who holds the lock, for the message of whoever is refused."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{holder}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
