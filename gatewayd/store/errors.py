"""The store's errors and the translation of sqlite3/OS errors into them with advice.

`StoreError` (gatewayd/errors.py) is the root. `RecordRejectedError` is one record that cannot be
stored (its device id is unusable, or the database refused that row alone): the writer and every
other write carry on. `StoreReentryError` is a Store entered twice. `describe_problem` turns a
failed write into the plain-words state of degraded mode (records.StoreProblem).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sqlite3
from pathlib import Path
from typing import Final

from gatewayd.errors import StoreError
from gatewayd.store.records import ProblemCause

__all__ = [
    "RecordRejectedError",
    "StoreError",
    "StoreReentryError",
    "describe_problem",
    "is_corruption",
    "is_degrading",
    "translate_error",
]

# SQLite primary result codes (https://sqlite.org/rescode.html); sqlite3 exposes the extended
# code as ``sqlite_errorcode`` and the primary code is its low byte.
SQLITE_PERM: Final = 3
SQLITE_BUSY: Final = 5
SQLITE_LOCKED: Final = 6
SQLITE_READONLY: Final = 8
SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_CANTOPEN: Final = 14
SQLITE_NOTADB: Final = 26

#: Below this many free bytes an I/O error while writing is called "disk full" (SQLite reports
#: a failed write as SQLITE_IOERR_WRITE when the OS says EFBIG or a short write hits ENOSPC).
_NEARLY_FULL_BYTES: Final = 1024 * 1024


class RecordRejectedError(StoreError):
    """One record could not be stored; nothing else is affected (not a reason to stop).

    ``device_id``, ``field`` and ``value`` name what was wrong (``field`` is None when the
    database refused the row as a whole, e.g. a duplicate event id).
    """

    def __init__(
        self, path: str | Path, device_id: str | None, field: str | None, value: object, why: str
    ) -> None:
        self.device_id = device_id
        self.field = field
        self.value = value
        who = f"device {device_id!r}" if device_id is not None else "the gateway"
        what = f"{field}={value!r}: " if field is not None else ""
        super().__init__(path, f"record of {who} rejected: {what}{why}")


class StoreReentryError(StoreError, RuntimeError):
    """A Store was entered while already entered, or after it was closed."""


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _code(exc: BaseException) -> int | None:
    """The SQLite primary code of ``exc``, an OSError's errno mapped onto one."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            return SQLITE_FULL
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return SQLITE_READONLY
        if exc.errno == errno.ENOENT:
            return SQLITE_CANTOPEN
    return _primary_code(exc)


def translate_error(exc: BaseException, path: Path, action: str) -> StoreError:
    """One StoreError for a foreign error raised while doing ``action`` (e.g. "write")."""
    if isinstance(exc, StoreError):
        return exc
    code = _code(exc)
    detail = str(exc) or type(exc).__name__
    advice = {
        SQLITE_FULL: (
            "the disk (or the database's page limit) is full; free space on the file system"
            " holding it or lower store.max_size_mb / store.retention_days"
        ),
        SQLITE_READONLY: (
            "the file or its directory is read-only for this user; under systemd check"
            " StateDirectory= and ReadWritePaths=, otherwise the owner and mode of the file,"
            " its directory and any -wal/-shm files"
        ),
        SQLITE_PERM: "permission denied; check the owner and mode of the file and its directory",
        SQLITE_CANTOPEN: (
            "cannot open the file; check that the directory exists and is writable by the user"
            " gatewayd runs as"
        ),
        SQLITE_BUSY: (
            "the database is locked by another process; is a second gatewayd running on the"
            " same store.path?"
        ),
        SQLITE_LOCKED: "the database is locked by another connection",
        SQLITE_IOERR: "an I/O error from the storage device; check the kernel log (dmesg)",
        SQLITE_CORRUPT: (
            "the database file is corrupt; gatewayd moves it aside and starts a fresh one when a"
            " write finds it so, and at every start"
        ),
        SQLITE_NOTADB: "the file is not an SQLite database",
    }.get(code if code is not None else -1)
    if advice is None:
        return StoreError(path, f"cannot {action}: {detail}", code=code)
    return StoreError(path, f"cannot {action}: {advice} ({detail})", code=code)


def is_degrading(exc: BaseException) -> bool:
    """Whether a failed batch means degraded mode (hold and retry) rather than a bug.

    Every error from the database or the file system is: disk full, locked past busy_timeout,
    I/O errors, a read-only or vanished file, corruption. They are about the disk, and the
    gateway must outlive them. Anything else (a TypeError in our own code) is not.
    """
    return isinstance(exc, sqlite3.DatabaseError | OSError)


def is_corruption(exc: BaseException) -> bool:
    """Whether SQLite said the file is corrupt or not a database (not busy, locked or I/O)."""
    return _primary_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (its nearest existing parent's)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        dev = p.stat().st_dev
        while p != p.parent and p.parent.stat().st_dev == dev:
            p = p.parent
    except OSError:
        pass
    return p


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(mount_point(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _size_limit(path: Path) -> int | None:
    """The process's file size limit (RLIMIT_FSIZE) when the log or its WAL is at it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return None
    sizes = []
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            sizes.append(Path(f"{path}{suffix}").stat().st_size)
    # A write that would cross the limit fails: "at it" is within a WAL frame or two of it.
    return soft if sizes and max(sizes) + 2 * 65536 >= soft else None


def describe_problem(  # noqa: PLR0911 - one return per cause reads best
    exc: BaseException, path: Path
) -> tuple[ProblemCause, str]:
    """What is wrong, in plain words with the fix, for a write that failed with ``exc``."""
    code = _code(exc)
    detail = str(exc) or type(exc).__name__
    mount = mount_point(path)
    free = _free_bytes(path)
    if code == SQLITE_IOERR and free is not None and free < _NEARLY_FULL_BYTES:
        code = SQLITE_FULL
    limit = _size_limit(path) if code in (SQLITE_IOERR, SQLITE_FULL) else None
    if limit is not None:
        return "disk_full", (
            f"the event log {path} reached the file size limit of {limit} bytes ({detail}):"
            " raise it (ulimit -f, LimitFSIZE= in the unit)"
        )
    if code == SQLITE_FULL:
        if free is not None and free >= _NEARLY_FULL_BYTES:
            return "disk_full", (
                f"the event log {path} cannot grow ({detail}) although {mount} has"
                f" {free // (1024 * 1024)} MiB free: a file size limit (ulimit -f, LimitFSIZE=)"
                " or the database's page limit; raise the limit"
            )
        return "disk_full", f"disk full on {mount} ({detail}): free space there"
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return "locked", (
            f"another process holds the event log {path} locked ({detail}): stop it (a second"
            " gatewayd, or an sqlite3 shell left in a transaction)"
        )
    if code in (SQLITE_READONLY, SQLITE_PERM):
        return "read_only", (
            f"the event log {path} or {mount} became read-only ({detail}): check the file's"
            " owner and mode, and dmesg for a file system remounted read-only"
        )
    if code == SQLITE_CANTOPEN:
        return "cannot_open", (
            f"cannot open the event log {path} ({detail}): check that {path.parent} exists and"
            " is writable"
        )
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return "corrupt", (
            f"the event log {path} is corrupt ({detail}): gatewayd moves it aside and starts a"
            " fresh one once SQLite's quick_check agrees (at most every 10 minutes while running,"
            " and at every start)"
        )
    return "io_error", (
        f"I/O error writing the event log {path} on {mount} ({detail}): check the storage"
        " device and the kernel log (dmesg)"
    )
