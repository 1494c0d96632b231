"""`gatewayd store vacuum`: rewrite the event log compactly, with the gateway stopped.

Retention already hands freed pages back to the file system (``PRAGMA incremental_vacuum``,
docs/store.md), so the file rarely holds much free space; what a full ``VACUUM`` adds is a file
rewritten in order, its free pages gone and its pages defragmented, e.g. after lowering
``store.retention_days`` by a lot. SQLite writes a compacted copy and then the file again
through its WAL, so it needs about twice the live data free on the log's file system; the copy
is made beside the log (not in /tmp, often a small tmpfs) and the space is checked first.
VACUUM is one transaction: interrupted or failed, the file is as it was.

It takes the event log's lock (lock.EventLogLock), so it refuses to run beside a gatewayd that
has the log open, whose writes it would otherwise block for as long as the rewrite takes.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gatewayd.errors import StoreError
from gatewayd.store.errors import translate_error
from gatewayd.store.lock import EventLogLock
from gatewayd.store.open import SQLITE_MAGIC, log_bytes
from gatewayd.store.schema import SCHEMA_VERSION

__all__ = ["VacuumResult", "vacuum_event_log"]

#: Kept free beyond the estimate, for the WAL's headers and the file system's own blocks.
_MARGIN_BYTES: Final = 4 * 1024 * 1024
_BUSY_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class VacuumResult:
    """Sizes before and after (the file with its -wal), the live data, and how long it took."""

    before_bytes: int
    after_bytes: int
    live_bytes: int
    seconds: float


def vacuum_event_log(path: Path) -> VacuumResult:
    """VACUUM the event log at ``path``; StoreError says why not (missing, in use by a running
    gatewayd, too little free space, written by a newer gatewayd, unreadable or corrupt)."""
    if not path.is_file():
        raise StoreError(path, f"no event log at {path}: nothing to vacuum")
    with EventLogLock.acquire(path, "vacuum it"):
        started = time.monotonic()
        before = log_bytes(path)
        # Checked before SQLite opens the file: opening a WAL-mode file creates its -shm and
        # -wal files, which on a full disk fails with no word about space.
        _check_space(path, _live_upper_bound(path))
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise translate_error(exc, path, "open") from exc
        try:
            live = _check(conn, path)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            # The copy goes beside the log, on the file system whose space was checked. This
            # pragma is process-wide, and reset at once.
            conn.execute(f"PRAGMA temp_store_directory = '{_quoted(path.parent.absolute())}'")
            try:
                # Only takes effect through a VACUUM; gatewayd creates every file this way.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("VACUUM")
            finally:
                conn.execute("PRAGMA temp_store_directory = ''")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise translate_error(exc, path, "vacuum") from exc
        finally:
            conn.close()
        return VacuumResult(before, log_bytes(path), live, time.monotonic() - started)


def _check(conn: sqlite3.Connection, path: Path) -> int:
    """The live bytes; StoreError when the file is newer than this gatewayd or space is short."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            path,
            f"was written by a newer gatewayd (schema version {version}; this one knows up to"
            f" {SCHEMA_VERSION}): vacuum it with that version",
        )
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free_pages,) = conn.execute("PRAGMA freelist_count").fetchone()
    live = int(page_size) * (int(pages) - int(free_pages))
    _check_space(path, live)
    return live


def _live_upper_bound(path: Path) -> int:
    """At least the live bytes, read from the file's header without opening it with SQLite:
    the file's size less its free-list pages, plus its -wal (whose frames may add pages).
    Not a SQLite file at all: 0, and SQLite's own open says what is wrong."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError:
        return 0
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return 0
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    free_pages = int.from_bytes(header[36:40], "big")
    return max(0, log_bytes(path) - free_pages * page_size)


def _check_space(path: Path, live: int) -> None:
    need = 2 * live + _MARGIN_BYTES
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise StoreError(
            path,
            f"not enough free space to vacuum: it needs about {_mb(need)} free in"
            f" {path.parent} (a compacted copy of the {_mb(live)} of live data, then the file"
            f" again through its WAL), and {_mb(free)} is free. Free some space first; retention"
            " (store.retention_days, store.max_size_mb) shrinks the log without a vacuum",
        )


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
