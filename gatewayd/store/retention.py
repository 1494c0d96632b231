"""Retention: by age, by size, raw samples by their own age. Runs on the writer thread.

Order of sacrifice when the file is over ``max_size_mb``: raw samples (the bulk of the bytes),
then whole windows, oldest first, then the oldest *published* events. An event whose outbox row
is still pending is never deleted -- not by age, not by size; a trigger in the schema enforces
it even if this code is wrong. If only pending events are left, the store stays over its size
limit and says so (``RetentionResult.over_size``) rather than break the delivery guarantee.

Freed pages go back to the file system with ``PRAGMA incremental_vacuum`` (the file is created
with ``auto_vacuum = INCREMENTAL``), a cheap page move at the end of the file. A full ``VACUUM``
rewrites the whole file, needs as much free space again and holds the write lock for its
duration, so it is never run automatically.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Final

from gatewayd.store.records import RetentionResult

__all__ = ["RetentionPolicy", "live_bytes", "run_retention"]

_MIN_CHUNK: Final = 64
#: Pages handed back per pass (256 MiB of 4 KiB pages); the rest goes at the next pass.
_MAX_VACUUM_PAGES: Final = 65536
_NOT_PENDING: Final = (
    "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = events.id AND o.done_at IS NULL)"
)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The limits, from StoreConfig, in seconds and bytes."""

    max_age_s: float
    raw_max_age_s: float
    keep_raw: bool
    max_bytes: int


def live_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the main file in use (page count minus free pages); the WAL is not counted."""
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int(page_size) * (int(pages) - int(free))


def run_retention(conn: sqlite3.Connection, policy: RetentionPolicy, now: float) -> RetentionResult:
    """Delete what the policy says may go; call inside a transaction (the writer's)."""
    raw_cutoff = now - policy.raw_max_age_s if policy.keep_raw else math.inf
    cutoff = now - policy.max_age_s
    raw = conn.execute("DELETE FROM raw_windows WHERE received_at < ?", (raw_cutoff,)).rowcount
    windows = conn.execute("DELETE FROM windows WHERE received_at < ?", (cutoff,)).rowcount
    events = conn.execute(
        f"DELETE FROM events WHERE created_at < ? AND {_NOT_PENDING}",  # noqa: S608 - constant
        (cutoff,),
    ).rowcount

    over_size = False
    size = live_bytes(conn)
    while size > policy.max_bytes:
        excess = (size - policy.max_bytes) / size
        deleted = 0
        for table, where in (
            ("raw_windows", "1"),
            ("windows", "1"),
            ("events", _NOT_PENDING),
        ):
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            if not count:
                continue
            # Delete a share of the rows proportional to the excess (plus a margin), oldest
            # first by rowid, so a large excess takes a few passes rather than thousands.
            chunk = max(_MIN_CHUNK, math.ceil(count * excess * 1.1))
            deleted = conn.execute(
                f"DELETE FROM {table} WHERE rowid IN"  # noqa: S608 - constant table names
                f" (SELECT rowid FROM {table} WHERE {where} ORDER BY rowid LIMIT ?)",
                (chunk,),
            ).rowcount
            if deleted:
                if table == "raw_windows":
                    raw += deleted
                elif table == "windows":
                    windows += deleted
                else:
                    events += deleted
                break
        if not deleted:
            over_size = True
            break
        size = live_bytes(conn)

    (free_before,) = conn.execute("PRAGMA freelist_count").fetchone()
    # Each sqlite3_step of incremental_vacuum frees one page, and Python's sqlite3 steps a
    # statement without result columns only once: so one execute per free page. Each is a
    # cheap cached statement (about a microsecond a page).
    for _ in range(min(int(free_before), _MAX_VACUUM_PAGES)):
        conn.execute("PRAGMA incremental_vacuum")
    (free_after,) = conn.execute("PRAGMA freelist_count").fetchone()
    return RetentionResult(
        windows=windows,
        raw_windows=raw,
        events=events,
        freed_pages=int(free_before) - int(free_after),
        size_bytes=size,
        over_size=over_size,
    )
