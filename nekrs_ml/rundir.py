"""A run directory's files are trusted only when this user made them.

Another local user must not be able to plant a password, a server configuration or a state
file that the orchestrator then uses, and two live runs must never share a directory:

- ``private_dir``: the directory is ours and closed to everyone else (0700);
- ``write_private``: a file is written whole under a fresh name (0600) and renamed in place;
- ``read_private``: a file is read only when it is ours, closed to others and not a link;
- ``RunLock``: an exclusive flock on a file in the directory, held by the live run;
- ``write_file`` / ``append_line``: the outputs of a run (models, checkpoints, summaries,
  report.json, plots, history) are never written through a link: a new file under a fresh
  name (O_CREAT | O_EXCL | O_NOFOLLOW) renamed in place, or an append opened with O_NOFOLLOW;
  a full disk raises DiskFullError naming the file system, and leaves no partial file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Optional, Union

from .errors import DiskFullError, OrchestratorError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
MAX_PRIVATE_BYTES = 1 << 20  # what we write there is small; refuse to read anything larger


def private_dir(path: Path) -> Path:
    """Creates ``path`` (0700) or checks that the existing one belongs to this user; closes it
    to group and others either way."""
    path = Path(path)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, path) or OrchestratorError(
            f"cannot create the directory {path}: {exc.strerror}") from None
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
    Several processes may race for it (the nodes of a colocated run, on a shared file system):
    one wins, the others read it, and none reads it half-written. The text goes to a file of
    this call's own first, which is then linked to ``path``: a link never replaces an existing
    file, and ``path`` appears with its whole text."""
    path = Path(path)
    if os.path.lexists(path):  # the usual case on all nodes but one: no disk space needed
        return False
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        try:
            os.link(staged, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return _create_exclusive(path, text)  # a file system without hard links
        return True
    finally:
        os.unlink(staged)


def _create_exclusive(path: Path, text: str) -> bool:
    """create_private where links cannot be made: created, then written (a reader racing the
    creator may find it empty for that moment)."""
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


# --- the outputs of a run ---------------------------------------------------------------------
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    device = os.stat(path).st_dev
    while path != path.parent and os.stat(path.parent).st_dev == device:
        path = path.parent
    return path


def free_bytes(path: Path) -> Optional[int]:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    try:
        info = os.statvfs(mount_point(path))
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def disk_full_message(path: Path) -> str:
    try:
        where = mount_point(path)
    except OSError:
        where = Path(path).parent
    free = free_bytes(path)
    left = f", {free / 1024:.0f} KiB free" if free is not None else ""
    return (f"no space left on device writing {path} (the file system mounted at {where}"
            f"{left}): free space there, or choose a run directory on another file system "
            "(--run-dir)")


def disk_error(exc: BaseException, path: Path) -> Optional[DiskFullError]:
    """The DiskFullError for an OSError of a full disk or quota; None for any other error."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        error = DiskFullError(disk_full_message(path))
        error.errno = exc.errno
        return error
    return None


def write_file(path: Union[str, Path], data: Union[bytes, str],
               mode: int = 0o644) -> Path:
    """Writes ``data`` to a new file beside ``path`` (a fresh name, O_CREAT | O_EXCL |
    O_NOFOLLOW) and renames it over ``path``: never through a link planted at either name,
    never a torn file for a reader or a killed writer, nothing left behind when it fails.
    A full disk raises DiskFullError naming the file system."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise disk_error(exc, path) or exc
    try:
        try:
            os.fchmod(fd, mode & ~_umask())
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        error = disk_error(exc, path)
        if error is not None and error is not exc:
            raise error from None
        raise
    return path


def append_line(path: Union[str, Path], text: str, mode: int = 0o644) -> None:
    """Appends one line to ``path`` (created if missing), never through a link; a full disk
    raises DiskFullError."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OrchestratorError(f"{path} is a symbolic link; remove it") from None
        raise disk_error(exc, path) or exc
    try:
        data = (text.rstrip("\n") + "\n").encode()
        written = os.write(fd, data)
        if written != len(data):  # a short append: the disk filled up on the way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        raise disk_error(exc, path) or exc
    finally:
        os.close(fd)


def open_log(path: Union[str, Path]):
    """A log file to append to (binary), never through a link."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OrchestratorError(f"log file {path} is a symbolic link; remove it") from None
        raise disk_error(exc, path) or exc
    return os.fdopen(fd, "ab")


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
