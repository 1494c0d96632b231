"""The SQL that reads the log: one function per question, shared by `Store` (its reader threads)
and `gatewayd events`/`devices list` (report.EventLogReader). Each takes a ``sqlite3.Connection``
whose ``row_factory`` is ``sqlite3.Row`` and blocks; none writes, except ``write_carry_over``,
which the writer thread runs inside its transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gatewayd.store.records import (
    GATEWAY,
    SEVERITIES,
    DeviceCursor,
    EventQuery,
    LoggedEvent,
    OutboxItem,
    StoredEvent,
    StoredWindow,
)

__all__ = [
    "CarryOver",
    "event_from_row",
    "iter_windows",
    "latest_alerts",
    "latest_gateway_event",
    "open_events",
    "read_carry_over",
    "select_cursors",
    "select_events",
    "select_pending",
    "select_windows",
    "unannounced_removals",
    "window_from_row",
    "write_carry_over",
]

_EVENT_COLUMNS: Final = (
    "e.id, e.device_id, e.kind, e.severity, e.state, e.created_at, e.t_ms, e.payload"
)
_INSERT_EVENT: Final = (
    "INSERT OR IGNORE INTO events"
    " (id, device_id, kind, severity, state, created_at, t_ms, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def event_from_row(row: Mapping[str, Any] | sqlite3.Row) -> StoredEvent:
    """A `StoredEvent` from a row of the events table (a payload that is not an object is
    wrapped as ``{"value": ...}``)."""
    payload = json.loads(row["payload"])
    return StoredEvent(
        id=row["id"],
        device_id=row["device_id"],
        kind=row["kind"],
        severity=row["severity"],
        state=row["state"],
        created_at=row["created_at"],
        t_ms=row["t_ms"],
        payload=payload if isinstance(payload, dict) else {"value": payload},
    )


def window_from_row(row: sqlite3.Row) -> StoredWindow:
    """A `StoredWindow` from ``SELECT w.*, <has raw> AS has_raw``."""
    fields = dict(row)
    fields["offloaded"] = bool(fields["offloaded"])
    fields["has_raw"] = bool(fields["has_raw"])
    fields["result"] = json.loads(fields["result"]) if fields["result"] else None
    invalid = fields.get("invalid")
    fields["invalid"] = json.loads(invalid) if invalid else None
    return StoredWindow(**fields)


def select_events(conn: sqlite3.Connection, query: EventQuery) -> list[LoggedEvent]:
    """The newest ``query.limit`` matching events, oldest first, with their outbox state."""
    where: list[str] = []
    params: list[Any] = []
    if query.device is not None:
        # GATEWAY: the gateway's own events (and a device called that, if any).
        where.append(
            "(e.device_id = ? OR e.device_id IS NULL)"
            if query.device == GATEWAY
            else "e.device_id = ?"
        )
        params.append(query.device)
    if query.since is not None:
        where.append("e.created_at >= ?")
        params.append(query.since)
    if query.after is not None:
        where.append("e.rowid > ?")
        params.append(query.after)
    if query.kinds:
        where.append(f"e.kind IN ({', '.join('?' * len(query.kinds))})")
        params.extend(query.kinds)
    if query.min_severity is not None:
        shown = SEVERITIES[SEVERITIES.index(query.min_severity) :]
        where.append(f"e.severity IN ({', '.join('?' * len(shown))})")
        params.extend(shown)
    sql = (
        f"SELECT {_EVENT_COLUMNS}, o.id IS NOT NULL AS in_outbox, o.attempts, o.done_at,"  # noqa: S608
        " e.rowid AS position FROM events e LEFT JOIN outbox o ON o.event_id = e.id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    # rowid is the order of appending; newest first for the LIMIT, returned oldest first.
    sql += " ORDER BY e.rowid DESC"
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    rows = conn.execute(sql, params).fetchall()
    return [
        LoggedEvent(
            event=event_from_row(row),
            in_outbox=bool(row["in_outbox"]),
            attempts=row["attempts"] or 0,
            published_at=row["done_at"],
            position=row["position"],
        )
        for row in reversed(rows)
    ]


# The latest transition of each (device, alert kind). Alerts carry an episode number; one-off
# events (data_lost, gateway events) do not, and are never "open". SQLite returns the other
# columns of the row holding max(rowid).
_LATEST_ALERTS_SQL: Final = (
    f"SELECT {_EVENT_COLUMNS}, max(e.rowid) FROM events e"  # noqa: S608 - constant
    " WHERE json_extract(e.payload, '$.episode') IS NOT NULL"
    " GROUP BY e.device_id, e.kind ORDER BY max(e.rowid)"
)


def latest_alerts(conn: sqlite3.Connection) -> list[StoredEvent]:
    """The latest transition of every (device, alert kind), in the order they were written."""
    return [event_from_row(row) for row in conn.execute(_LATEST_ALERTS_SQL)]


def latest_gateway_event(conn: sqlite3.Connection, kind: str) -> StoredEvent | None:
    """The gateway's own (no device) latest event of ``kind``, or None."""
    row = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.device_id IS NULL AND e.kind = ?"  # noqa: S608 - constant
        " ORDER BY e.rowid DESC LIMIT 1",
        (kind,),
    ).fetchone()
    return None if row is None else event_from_row(row)


def open_events(conn: sqlite3.Connection) -> list[StoredEvent]:
    """Alerts whose latest transition is "raised": open when the gateway stopped."""
    return [e for e in latest_alerts(conn) if e.state == "raised"]


def select_pending(conn: sqlite3.Connection, limit: int) -> list[OutboxItem]:
    """Outbox rows not yet published, oldest first (so in creation order per device)."""
    # CROSS JOIN keeps outbox as the outer loop, walking the partial index of pending rows
    # in order, instead of scanning every event and sorting.
    sql = (
        f"SELECT o.id AS outbox_id, o.attempts, {_EVENT_COLUMNS}"  # noqa: S608 - constant
        " FROM outbox o CROSS JOIN events e ON e.id = o.event_id WHERE o.done_at IS NULL"
        " ORDER BY o.id LIMIT ?"
    )
    return [
        OutboxItem(outbox_id=row["outbox_id"], attempts=row["attempts"], event=event_from_row(row))
        for row in conn.execute(sql, (limit,))
    ]


def select_windows(
    conn: sqlite3.Connection, device: str | None, since: float | None, limit: int | None
) -> list[StoredWindow]:
    """Windows, filtered, oldest first."""
    return list(iter_windows(conn, device, since, None, limit))


def iter_windows(
    conn: sqlite3.Connection,
    device: str | None,
    since: float | None,
    until: float | None,
    limit: int | None = None,
) -> Iterator[StoredWindow]:
    """Windows received in [since, until), oldest first, read as they are consumed (a large log
    is never held in memory)."""
    where, params = ["1"], list[Any]()
    if device is not None:
        where.append("w.device_id = ?")
        params.append(device)
    if since is not None:
        where.append("w.received_at >= ?")
        params.append(since)
    if until is not None:
        where.append("w.received_at < ?")
        params.append(until)
    sql = (
        "SELECT w.*, r.window_id IS NOT NULL AS has_raw FROM windows w"  # noqa: S608
        f" LEFT JOIN raw_windows r ON r.window_id = w.id WHERE {' AND '.join(where)}"
        " ORDER BY w.id"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    for row in conn.execute(sql, params):
        yield window_from_row(row)


def select_cursors(conn: sqlite3.Connection) -> dict[str, DeviceCursor]:
    """Every device's resume cursor (devices without one are left out)."""
    return {
        row["device_id"]: DeviceCursor(row["boot_id"], row["next_seq"], row["last_seen"])
        for row in conn.execute(
            "SELECT device_id, boot_id, next_seq, last_seen FROM devices"
            " WHERE boot_id IS NOT NULL AND next_seq IS NOT NULL ORDER BY device_id"
        )
    }


def unannounced_removals(conn: sqlite3.Connection) -> list[str]:
    """Ids of the devices the log holds windows of and no ``device_removed`` event since their
    last one, sorted: the caller leaves out those still paired. A removal announced and then
    aged out by retention stays announced: the device's windows, older, went first."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT d.device_id FROM devices d"
            " WHERE EXISTS (SELECT 1 FROM windows w WHERE w.device_id = d.device_id)"
            " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.device_id = d.device_id"
            " AND e.kind = 'device_removed' AND e.created_at >= d.last_seen)"
            " ORDER BY d.device_id"
        )
    ]


@dataclass(frozen=True, slots=True)
class CarryOver:
    """What a fresh file must have from the old one: devices, pending and open events."""

    #: (device_id, first_seen, last_seen, boot_id, next_seq)
    devices: tuple[tuple[Any, ...], ...]
    #: (event row, attempts) of each pending event, in outbox order.
    pending: tuple[tuple[tuple[Any, ...], int], ...]
    #: Event rows of open alerts that were already published (kept so they stay open).
    open_published: tuple[tuple[Any, ...], ...]


def _event_tuple(e: StoredEvent) -> tuple[Any, ...]:
    payload = json.dumps(e.payload, separators=(",", ":"), sort_keys=True)
    return (e.id, e.device_id, e.kind, e.severity, e.state, e.created_at, e.t_ms, payload)


def read_carry_over(conn: sqlite3.Connection, limit: int = 1_000_000) -> CarryOver:
    """Read what `write_carry_over` copies, from a connection to the old file."""
    factory = conn.row_factory
    conn.row_factory = sqlite3.Row
    try:
        devices = tuple(
            tuple(row)
            for row in conn.execute(
                "SELECT device_id, first_seen, last_seen, boot_id, next_seq FROM devices"
            )
        )
        pending = select_pending(conn, limit)
        pending_ids = {item.event.id for item in pending}
        opened = [e for e in open_events(conn) if e.id not in pending_ids]
    finally:
        conn.row_factory = factory
    return CarryOver(
        devices=devices,
        pending=tuple((_event_tuple(item.event), item.attempts) for item in pending),
        open_published=tuple(_event_tuple(e) for e in opened),
    )


def write_carry_over(conn: sqlite3.Connection, carry: CarryOver, now: float) -> None:
    """Copy ``carry`` into a fresh file (inside the caller's transaction)."""
    conn.executemany(
        "INSERT OR IGNORE INTO devices (device_id, first_seen, last_seen, boot_id, next_seq)"
        " VALUES (?, ?, ?, ?, ?)",
        carry.devices,
    )
    for row in carry.open_published:
        conn.execute(_INSERT_EVENT, row)
        conn.execute(
            "INSERT OR IGNORE INTO outbox (event_id, created_at, done_at) VALUES (?, ?, ?)",
            (row[0], row[5], now),
        )
    for row, attempts in carry.pending:
        conn.execute(_INSERT_EVENT, row)
        conn.execute(
            "INSERT OR IGNORE INTO outbox (event_id, created_at, attempts) VALUES (?, ?, ?)",
            (row[0], row[5], attempts),
        )
