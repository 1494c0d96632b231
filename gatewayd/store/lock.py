"""One writer per event log: an exclusive ``flock`` on ``<name>.lock`` beside the file.

Two gateways writing one event log would both publish its outbox (every alert delivered twice)
and both number its windows; `gatewayd store vacuum` must not rewrite the file under a running
gateway. The lock file holds the holder's pid, for the message. ``flock`` is released by the
kernel when its holder exits, SIGKILL included, so a crash never leaves a stale lock; it is
independent of SQLite's own POSIX locks on the database file, which it never touches.

A lock file that cannot be created at all (a read-only or full file system) does not stop the
store: it logs ``store_lock_unavailable`` and carries on unlocked, since the lock guards against
a mistake, while refusing to start would lose every window.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from gatewayd.errors import StoreError

__all__ = ["EventLogInUseError", "EventLogLock", "lock_holder", "lock_path"]

log = structlog.get_logger("gatewayd.store")


class EventLogInUseError(StoreError):
    """Another process holds the event log's lock: a gatewayd is running on it."""

    def __init__(self, path: Path, holder: int | None, doing: str) -> None:
        self.holder = holder
        who = f"another process (pid {holder})" if holder else "another process"
        super().__init__(
            path,
            f"cannot {doing}: the event log is in use by {who}, a gatewayd already running on it"
            " (it holds the lock file "
            f"{lock_path(path)}); stop it first (sudo systemctl stop gatewayd), or point"
            " store.path at another file",
        )


def lock_path(path: Path) -> Path:
    """The lock file of the event log at ``path``."""
    return path.with_name(f"{path.name}.lock")


class EventLogLock:
    """The exclusive lock on one event log. ``with EventLogLock.acquire(path, doing): ...``"""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        """False when the lock file could not be created and the store runs unlocked."""
        return self._fd is not None

    @classmethod
    def acquire(cls, path: Path, doing: str = "open it for writing") -> EventLogLock:
        """Take the lock without waiting; raise EventLogInUseError when another process has it.

        ``doing`` completes the error's "cannot …". Creates the directory if needed.
        """
        target = lock_path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            return cls._unlocked(path, exc)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise EventLogInUseError(path, holder, doing) from None
            return cls._unlocked(path, exc)
        _write_pid(fd)
        return cls(path, fd)

    @classmethod
    def _unlocked(cls, path: Path, exc: OSError) -> EventLogLock:
        log.warning(
            "store_lock_unavailable",
            path=str(lock_path(path)),
            error=f"{exc.strerror or exc} (errno {exc.errno})",
            effect="not locked: nothing stops a second gatewayd from writing this event log",
        )
        return cls(path, None)

    def release(self) -> None:
        """Let go of the lock (closing the file releases it); the file itself stays."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(path: Path, proc_locks: Path = Path("/proc/locks")) -> int | None:
    """The pid holding the event log's lock, or None (not held, or not known here).

    Looked up in the kernel's table of locks (Linux's /proc/locks) without touching the lock
    itself: taking it, even for a moment, could make a gatewayd that starts just then refuse
    to run. In a container the pid is the one the kernel's namespace shows.
    """
    try:
        st = lock_path(path).stat()
        table = proc_locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2162720 0 EOF" (a waiter's: "1: -> FLOCK ...").
        fields = line.split()
        held = len(fields) >= 6 and fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"]
        if held and fields[5] == device and fields[4].isdigit():
            return int(fields[4])
    return None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _write_pid(fd: int) -> None:
    # For the message a second process shows; a full disk may refuse even these few bytes, and
    # the lock holds without them.
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass
