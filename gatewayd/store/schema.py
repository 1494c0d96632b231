"""The schema and its migrations: ``PRAGMA user_version`` is the schema version.

``MIGRATIONS[n]`` takes a file from version ``n`` to ``n + 1``. Each runs in its own
transaction together with the ``user_version`` update, so a crash mid-migration leaves the file
at the previous version. Migrations are frozen once released: change the schema by appending a
function, never by editing one (an existing file has already run it).

A file with a version newer than this code knows is refused, untouched: an older gatewayd must
not write into a layout it does not understand (a downgrade after an upgrade, say).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from gatewayd.store.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

Migration = Callable[[sqlite3.Connection], None]


def _v1_event_log(conn: sqlite3.Connection) -> None:
    """Devices, events and the outbox: the part the delivery guarantee rests on."""
    for statement in (
        """
        CREATE TABLE devices (
            device_id  TEXT PRIMARY KEY,
            address    TEXT,
            kind       TEXT,
            name       TEXT,
            first_seen REAL NOT NULL,
            last_seen  REAL NOT NULL,
            last_state TEXT CHECK (last_state IS NULL OR json_valid(last_state))
        )
        """,
        """
        CREATE TABLE events (
            id         TEXT PRIMARY KEY CHECK (length(id) = 36),
            device_id  TEXT REFERENCES devices(device_id),
            kind       TEXT NOT NULL,
            severity   TEXT NOT NULL,
            state      TEXT NOT NULL,
            created_at REAL NOT NULL,
            t_ms       INTEGER,
            payload    TEXT NOT NULL CHECK (json_valid(payload))
        )
        """,
        "CREATE INDEX events_created ON events(created_at)",
        "CREATE INDEX events_device_created ON events(device_id, created_at)",
        """
        CREATE TABLE outbox (
            id         INTEGER PRIMARY KEY,
            event_id   TEXT NOT NULL UNIQUE REFERENCES events(id) ON DELETE CASCADE,
            device_id  TEXT,
            topic      TEXT NOT NULL,
            created_at REAL NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 0,
            done_at    REAL
        )
        """,
        # Pending rows in creation order (the rowid), overall and per device: small partial
        # indexes, since almost every row is done.
        "CREATE INDEX outbox_pending ON outbox(id) WHERE done_at IS NULL",
        "CREATE INDEX outbox_pending_device ON outbox(device_id, id) WHERE done_at IS NULL",
        # The delivery guarantee, enforced by the database itself: whatever the retention code
        # does, an event whose outbox row is pending cannot be deleted.
        """
        CREATE TRIGGER events_keep_pending BEFORE DELETE ON events
        WHEN EXISTS (SELECT 1 FROM outbox WHERE event_id = OLD.id AND done_at IS NULL)
        BEGIN
            SELECT RAISE(ABORT, 'event has a pending outbox row');
        END
        """,
    ):
        conn.execute(statement)


def _v2_windows(conn: sqlite3.Connection) -> None:
    """Per-window observations, and the raw samples of offloaded windows in their own table."""
    for statement in (
        """
        CREATE TABLE windows (
            id             INTEGER PRIMARY KEY,
            device_id      TEXT NOT NULL REFERENCES devices(device_id),
            seq            INTEGER,
            t_ms           INTEGER,
            received_at    REAL NOT NULL,
            kind           TEXT NOT NULL CHECK (kind IN ('summary', 'window')),
            hr_bpm         REAL,
            hr_source      TEXT,
            activity       TEXT,
            activity_conf  REAL,
            entropy_bits   REAL,
            signal_quality INTEGER,
            battery        INTEGER,
            offloaded      INTEGER NOT NULL DEFAULT 0 CHECK (offloaded IN (0, 1)),
            model_id       TEXT,
            result         TEXT CHECK (result IS NULL OR json_valid(result))
        )
        """,
        "CREATE INDEX windows_received ON windows(received_at)",
        "CREATE INDEX windows_device ON windows(device_id, id)",
        """
        CREATE TABLE raw_windows (
            window_id     INTEGER PRIMARY KEY REFERENCES windows(id) ON DELETE CASCADE,
            received_at   REAL NOT NULL,
            sample_format TEXT NOT NULL,
            bvp_rate_hz   INTEGER NOT NULL,
            acc_rate_hz   INTEGER NOT NULL,
            acc_lsb_per_g INTEGER NOT NULL,
            bvp           BLOB NOT NULL,
            acc           BLOB NOT NULL
        )
        """,
        "CREATE INDEX raw_windows_received ON raw_windows(received_at)",
    ):
        conn.execute(statement)


def _v3_cursors(conn: sqlite3.Connection) -> None:
    """Only what is used, plus per-device resume cursors and a note of values not storable.

    The outbox loses ``topic`` (the publisher derives it from the event's device) and
    ``device_id`` (the event has it); devices lose ``address``/``kind``/``name``/``last_state``
    (nothing wrote them: the paired registry has them) and gain ``boot_id``/``next_seq``.
    ``invalid`` (JSON, on windows and events) names the fields stored NULL because SQLite could
    not hold their value.
    """
    for statement in (
        "DROP INDEX outbox_pending_device",
        "ALTER TABLE outbox DROP COLUMN device_id",
        "ALTER TABLE outbox DROP COLUMN topic",
        "ALTER TABLE devices DROP COLUMN address",
        "ALTER TABLE devices DROP COLUMN kind",
        "ALTER TABLE devices DROP COLUMN name",
        "ALTER TABLE devices DROP COLUMN last_state",
        "ALTER TABLE devices ADD COLUMN boot_id INTEGER",
        "ALTER TABLE devices ADD COLUMN next_seq INTEGER",
        "ALTER TABLE windows ADD COLUMN invalid TEXT"
        " CHECK (invalid IS NULL OR json_valid(invalid))",
        "ALTER TABLE events ADD COLUMN invalid TEXT CHECK (invalid IS NULL OR json_valid(invalid))",
    ):
        conn.execute(statement)


MIGRATIONS: Final[Sequence[Migration]] = (_v1_event_log, _v2_windows, _v3_cursors)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0 for a new, empty file)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def migrate(conn: sqlite3.Connection, path: Path, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the file to ``target``; return the version it had. Refuses newer files.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each step opens its own
    transaction.
    """
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise StoreError(
            path,
            f"was written by a newer gatewayd (schema version {found}; this one knows up to"
            f" {SCHEMA_VERSION}); upgrade gatewayd, or point store.path at another file."
            " The file was not modified.",
        )
    if found == 0:
        # Must precede the first table (the store sets it even earlier, before WAL).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return found
