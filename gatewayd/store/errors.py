"""The translation of sqlite3/OS errors into StoreErrors with advice (StoreError: errors.py)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Final

from gatewayd.errors import StoreError

__all__ = ["StoreError", "translate_error"]

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


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def translate_error(exc: BaseException, path: Path, action: str) -> StoreError:
    """One StoreError for a foreign error raised while doing ``action`` (e.g. "write")."""
    if isinstance(exc, StoreError):
        return exc
    code = _primary_code(exc)
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            code = SQLITE_FULL
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            code = SQLITE_READONLY
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
            "the database file is corrupt; restart gatewayd to move it aside and start a fresh one"
        ),
        SQLITE_NOTADB: "the file is not an SQLite database",
    }.get(code if code is not None else -1)
    if advice is None:
        return StoreError(path, f"cannot {action}: {detail}", code=code)
    return StoreError(path, f"cannot {action}: {advice} ({detail})", code=code)
