"""The event log for people: `gatewayd events` and the store columns of `gatewayd devices list`.

`EventLogReader` opens the file **read-only** (an SQLite ``mode=ro`` URI): it never creates,
migrates, checks-and-moves or writes the file, so it can run while the daemon runs and on a copy
someone sent. Everything else here is pure: the ``--since`` parser, the event summary line, the
merge of the paired-device registry with what the log saw, and the tables and JSON.

The reader's calls block (SQLite); they are for the command line, which has no event loop.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

from gatewayd.store.errors import (
    SQLITE_CORRUPT,
    SQLITE_NOTADB,
    SQLITE_READONLY,
    StoreError,
    translate_error,
)
from gatewayd.store.open import FileId, file_id, first_problem
from gatewayd.store.queries import (
    iter_windows,
    latest_alerts,
    latest_gateway_event,
    select_events,
    window_from_row,
)
from gatewayd.store.records import (
    GATEWAY,
    SEVERITIES,
    EventQuery,
    LoggedEvent,
    StoredEvent,
    StoredWindow,
)
from gatewayd.store.schema import SCHEMA_VERSION
from gatewayd.store.writer import DEGRADED_KIND
from gatewayd.tables import format_table

__all__ = [
    "GATEWAY",
    "SEVERITIES",
    "DeviceActivity",
    "DeviceListing",
    "EventLogHealth",
    "EventLogMissingError",
    "EventLogReader",
    "EventQuery",
    "LoggedEvent",
    "PairedLike",
    "devices_json",
    "event_line",
    "event_message",
    "events_json",
    "format_devices",
    "format_events",
    "merge_devices",
    "parse_since",
]

#: Longest MESSAGE cell in the events table; --json has the whole payload.
MESSAGE_WIDTH: Final = 60

T = TypeVar("T")

_BUSY_TIMEOUT_S: Final = 5.0
_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_S: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


class EventLogMissingError(StoreError):
    """There is no event log at the path (or an empty file): the gateway has not run yet."""


# --- --since -------------------------------------------------------------------------------------


def parse_since(text: str, now: float, tz: tzinfo | None = None) -> float:
    """Unix seconds for ``--since``: a duration back from ``now`` or an ISO-8601 date/time.

    Durations are a number and a unit: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``. A date or time
    without an offset is in ``tz`` (default: the local time zone); ``Z`` or ``+02:00`` are
    honoured. Raises ValueError with the accepted forms.
    """
    value = text.strip()
    match = _DURATION_RE.fullmatch(value)
    if match is not None:
        return now - float(match.group(1)) * _UNIT_S[match.group(2).lower()]
    try:
        when = datetime.fromisoformat(value)  # a date alone is its midnight
    except ValueError:
        raise ValueError(
            f"expected a duration like 15m, 2h or 7d, or an ISO-8601 date or time like"
            f" 2026-11-25 or 2026-11-25T08:00 (local time unless it ends in Z or +HH:MM),"
            f" got {text!r}"
        ) from None
    if when.tzinfo is None:
        # A naive datetime: attach tz, or let astimezone() interpret it as local time.
        when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
    return when.timestamp()


# --- what the reader returns ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceActivity:
    """What the log knows about one device: its row, its windows, its open alerts."""

    device_id: str
    first_seen: float
    last_seen: float
    windows: int
    last_window: StoredWindow | None
    #: Alert kinds whose latest transition for this device is "raised", sorted.
    open_alerts: tuple[str, ...]
    #: "disconnected" / "connected" from the latest `disconnected` alert transition, if any.
    last_link: str | None
    #: When the gateway last said it let the device go (its latest ``device_removed`` event).
    removed_at: float | None = None

    @property
    def link(self) -> str:
        """The link as the log last recorded it: connected, disconnected, silent, removed or "-".

        The gateway writes no connect/disconnect rows, so this is inferred: a ``device_removed``
        event after its last window says removed (taken off the paired list or renamed); an
        open ``disconnected`` or ``device_silent`` alert says so; else a device that sent
        windows (or whose ``disconnected`` alert cleared) counts as connected as of
        ``last_seen``.
        """
        if self.removed_at is not None and self.removed_at >= self.last_seen:
            return "removed"
        if "disconnected" in self.open_alerts:
            return "disconnected"
        if "device_silent" in self.open_alerts:
            return "silent"
        if self.windows or self.last_link == "connected":
            return "connected"
        return "-"


# --- the read-only reader ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventLogHealth:
    """What `gatewayd doctor` reports of an event log (`EventLogReader.health`)."""

    schema_version: int
    #: The first thing ``PRAGMA quick_check`` found wrong; None: nothing.
    problem: str | None
    #: Events not yet delivered to the broker.
    pending: int
    #: The reason of an ``event_log_degraded`` still raised (the gateway stopped, or is
    #: running, with writes held in memory); None when there is none.
    degraded: str | None


class EventLogReader:
    """A read-only view of an event log file. Use ``with EventLogReader.open(path) as log``."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, version: int, identity: FileId | None
    ) -> None:
        self.path = path
        self.schema_version = version
        self._conn = conn
        self._identity = identity

    @classmethod
    def open(cls, path: str | Path) -> EventLogReader:
        """Open ``path`` read-only; EventLogMissingError if absent, StoreError if unreadable."""
        path = Path(path)
        identity = file_id(path)  # before opening: a file replaced meanwhile reads as replaced
        if not path.is_file():
            raise EventLogMissingError(
                path, f"no event log at {path} yet: the gateway has not run with this config"
            )
        conn = _connect_read_only(path)
        try:
            version = _checked_version(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, version, identity)

    def replaced(self) -> bool:
        """Whether the file at ``path`` is gone or another one (moved aside as corrupt, deleted,
        restored from a backup) since this reader opened it: then it reads the old file."""
        return file_id(self.path) != self._identity

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def last_position(self) -> int:
        """The position of the last event appended (0: none)."""
        rows = self._query("SELECT coalesce(max(rowid), 0) FROM events", [])
        return int(rows[0][0])

    def events(self, query: EventQuery) -> list[LoggedEvent]:
        """The newest ``query.limit`` matching events, oldest first, with their outbox state
        (queries.select_events: the same query as `Store.events`)."""
        return self._run(lambda conn: select_events(conn, query))

    def devices(self) -> list[DeviceActivity]:
        """Every device in the log, by id, with its window count, last window and open alerts."""
        devices = self._query(
            "SELECT device_id, first_seen, last_seen FROM devices ORDER BY device_id", []
        )
        counts: dict[str, int] = {}
        last: dict[str, StoredWindow] = {}
        if self.schema_version >= 2:  # windows arrived in schema version 2
            counts = {
                row["device_id"]: row["n"]
                for row in self._query(
                    "SELECT device_id, count(*) AS n FROM windows GROUP BY device_id", []
                )
            }
            for row in self._query(
                "SELECT w.*, r.window_id IS NOT NULL AS has_raw FROM windows w"
                " LEFT JOIN raw_windows r ON r.window_id = w.id"
                " WHERE w.id IN (SELECT max(id) FROM windows GROUP BY device_id)",
                [],
            ):
                last[row["device_id"]] = window_from_row(row)
        open_alerts: dict[str | None, list[str]] = {}
        last_link: dict[str | None, str] = {}
        for e in self._run(latest_alerts):
            if e.state == "raised":
                open_alerts.setdefault(e.device_id, []).append(e.kind)
            if e.kind == "disconnected":
                last_link[e.device_id] = "disconnected" if e.state == "raised" else "connected"
        removed_at: dict[str | None, float] = {
            row[0]: row[1]
            for row in self._query(
                "SELECT device_id, max(created_at) FROM events WHERE kind = 'device_removed'"
                " GROUP BY device_id",
                [],
            )
        }
        return [
            DeviceActivity(
                device_id=row["device_id"],
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                windows=counts.get(row["device_id"], 0),
                last_window=last.get(row["device_id"]),
                open_alerts=tuple(sorted(open_alerts.get(row["device_id"], ()))),
                last_link=last_link.get(row["device_id"]),
                removed_at=removed_at.get(row["device_id"]),
            )
            for row in devices
        ]

    def windows(
        self, device: str | None = None, since: float | None = None, until: float | None = None
    ) -> Iterator[StoredWindow]:
        """The windows received in [since, until), oldest first, read as they are consumed."""
        if self.schema_version < 2:  # windows arrived in schema version 2
            return
        rows = iter_windows(self._conn, device, since, until)
        try:
            yield from rows
        except sqlite3.Error as exc:
            raise _read_error(exc, self.path) from exc

    def health(self) -> EventLogHealth:
        """SQLite's quick_check (reads every page: seconds on a large log), the undelivered
        events and whether the log says it is degraded."""
        try:
            problem = first_problem(self._conn)
        except sqlite3.Error as exc:
            raise _read_error(exc, self.path) from exc  # busy, locked: no verdict
        if problem is not None:
            return EventLogHealth(self.schema_version, problem, 0, None)
        (pending,) = self._query("SELECT count(*) FROM outbox WHERE done_at IS NULL", [])[0]
        latest = self._run(lambda conn: latest_gateway_event(conn, DEGRADED_KIND))
        degraded = None
        if latest is not None and latest.state == "raised":
            degraded = str(latest.payload.get("reason", ""))
        return EventLogHealth(self.schema_version, None, int(pending), degraded)

    def _query(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return self._run(lambda conn: conn.execute(sql, params).fetchall())

    def _run(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return query(self._conn)
        except sqlite3.Error as exc:
            raise _read_error(exc, self.path) from exc


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: ``mode=ro``, and ``immutable=1`` only when safe.

    ``mode=ro`` still needs the WAL index (``-shm``): when nobody has the log open it is absent,
    and a user who may not create files in the state directory gets SQLITE_READONLY_CANTINIT.
    Then, and only if there is no ``-wal`` file (no process has the database open), the file is
    read as immutable: nothing can be changing it.
    """
    uri = path.absolute().as_uri()
    try:
        return _connect(f"{uri}?mode=ro")
    except sqlite3.Error as exc:
        readonly = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_READONLY
        if not readonly or Path(f"{path}-wal").exists():
            raise _read_error(exc, path) from exc
    try:
        return _connect(f"{uri}?mode=ro&immutable=1")
    except sqlite3.Error as exc:
        raise _read_error(exc, path) from exc


def _connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only = ON")  # belt and braces: mode=ro refuses writes already
        # Read the header and the WAL index now, so a bad file fails here and not mid-query.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _checked_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as exc:
        raise _read_error(exc, path) from exc
    if version == 0:
        raise EventLogMissingError(
            path, f"the event log at {path} is empty: the gateway has not run with this config"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            path,
            f"was written by a newer gatewayd (schema version {version}; this one knows up to"
            f" {SCHEMA_VERSION}); read it with that gatewayd. The file was not modified.",
        )
    return int(version)


def _read_error(exc: sqlite3.Error, path: Path) -> StoreError:
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StoreError(
            path,
            f"cannot read the event log: the file is corrupt or not a gatewayd event log ({exc})."
            " It was not modified; `gatewayd run` moves a corrupt log aside and starts a fresh"
            " one (docs/store.md)",
            code=code,
        )
    if code == SQLITE_READONLY:
        return StoreError(
            path,
            f"cannot read the event log while the gateway has it open: this user may not use"
            f" its shared-memory file {path}-shm ({exc}); run as the user gatewayd runs as"
            " (e.g. `sudo -u gatewayd gatewayd events`) or as root",
            code=code,
        )
    return translate_error(exc, path, "read the event log")


# --- events: summary, table, JSON ----------------------------------------------------------------


def event_message(event: StoredEvent) -> str:
    """One line about an event from its payload: the reason, then the evidence in brief."""
    payload = event.payload
    evidence = payload.get("evidence")
    evidence = evidence if isinstance(evidence, Mapping) else {}
    parts = [str(payload.get("message") or payload.get("reason") or "")]
    low, high = evidence.get("min"), evidence.get("max")
    impact, still = evidence.get("impact_g"), evidence.get("still_for_s")
    if _is_number(impact):
        # A fall: its min/max mix the impact with the stillness after it; say both plainly.
        parts.append(f"impact {impact:.1f} g" + (f", then still {still:.0f} s"
                                                 if _is_number(still) else ""))  # fmt: skip
    elif _is_number(low) and _is_number(high):
        windows = evidence.get("windows")
        n = len(windows) if isinstance(windows, list) else 0
        lo, hi = f"{low:.4g}", f"{high:.4g}"
        values = lo if lo == hi else f"{lo}-{hi}"
        parts.append(f"{values} over {n} window{'s' if n != 1 else ''}" if n else values)
    lasted = evidence.get("for_s")
    if _is_number(lasted):
        parts.append(f"for {lasted:.0f} s")
    count, first = evidence.get("count"), evidence.get("first")
    if _is_number(count) and _is_number(first):
        parts.append(f"{count} from seq {first}")
    return ", ".join(p for p in parts if p) or "-"


def format_events(events: Sequence[LoggedEvent], tz: tzinfo | None = None) -> str:
    """The events table: local time, device, kind, state, severity, category, message, published."""
    rows = [
        [
            _local(e.event.created_at, tz),
            e.event.device_id or GATEWAY,
            e.event.kind,
            e.event.state,
            e.event.severity,
            str(e.event.payload.get("category") or "-"),
            _clip(event_message(e.event), MESSAGE_WIDTH),
            ("yes" if e.published else "pending") if e.in_outbox else "-",
        ]
        for e in events
    ]
    headers = ["TIME", "DEVICE", "KIND", "STATE", "SEVERITY", "CATEGORY", "MESSAGE", "PUBLISHED"]
    return format_table(headers, rows, right=())


def event_line(e: LoggedEvent, tz: tzinfo | None = None) -> str:
    """One event on one line, for `gatewayd events --follow`: the table's columns but the
    delivery state (usually still pending when an event appears), with the message in full."""
    ev = e.event
    category = str(ev.payload.get("category") or "-")
    return (
        f"{_local(ev.created_at, tz)}  {ev.device_id or GATEWAY:<12}  {ev.kind:<18}"
        f"  {ev.state:<8}  {ev.severity:<8}  {category:<13}  {event_message(ev)}"
    )


def events_json(
    events: Iterable[LoggedEvent], topic_of: Callable[[str | None], str] | None = None
) -> list[dict[str, Any]]:
    """JSON-ready events, oldest first: the event, its whole payload and its delivery state.

    ``topic_of(device_id)`` gives the MQTT topic the publisher uses for an event (device None:
    the gateway's alerts); without it ``topic`` is null (the log does not store topics).
    """
    out = []
    for logged in events:
        e = logged.event
        evidence = e.payload.get("evidence")
        out.append(
            {
                "id": e.id,
                "time": _iso(e.created_at),
                "created_at": e.created_at,
                "device_id": e.device_id,
                "kind": e.kind,
                "state": e.state,
                "severity": e.severity,
                "category": e.payload.get("category"),
                "message": event_message(e),
                "evidence": evidence if isinstance(evidence, Mapping) else {},
                "t_ms": e.t_ms,
                "published": logged.published,
                "published_at": _iso(logged.published_at),
                "topic": topic_of(e.device_id) if topic_of is not None else None,
                "attempts": logged.attempts,
                "payload": e.payload,
            }
        )
    return out


# --- devices: registry + log ---------------------------------------------------------------------


class PairedLike(Protocol):
    """The fields of a paired device (gatewayd.link.registry.PairedDevice) used here."""

    @property
    def device_id(self) -> str:
        """The device's id."""
        ...

    @property
    def address(self) -> str:
        """Its Bluetooth address."""
        ...

    @property
    def kind(self) -> str:
        """wearable or heart_rate."""
        ...

    @property
    def name(self) -> str:
        """Its advertised name."""
        ...

    @property
    def renamed_from(self) -> tuple[str, ...]:
        """The ids it had before, oldest first."""
        ...

    @property
    def paired_at(self) -> str:
        """When it was paired (ISO-8601)."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceListing:
    """One row of `gatewayd devices list`: the paired device, what the log knows, or both."""

    device_id: str
    paired: PairedLike | None
    activity: DeviceActivity | None
    #: For an id no longer paired: the paired device's id now, when it was renamed from this one.
    renamed_to: str | None = None


def merge_devices(
    paired: Sequence[PairedLike], activity: Sequence[DeviceActivity]
) -> list[DeviceListing]:
    """Paired devices in registry order, then devices only the log knows (not paired), by id.

    Matched by device id: a device renamed after it sent data shows twice, its old id no longer
    paired and naming the id it goes by now (`DeviceListing.renamed_to`).
    """
    by_id = {a.device_id: a for a in activity}
    now = {old: p.device_id for p in paired for old in p.renamed_from}
    out = [DeviceListing(p.device_id, p, by_id.pop(p.device_id, None)) for p in paired]
    out += [
        DeviceListing(a.device_id, None, a, now.get(a.device_id))
        for a in sorted(by_id.values(), key=_by_id)
    ]
    return out


def format_devices(listings: Sequence[DeviceListing], now: float, tz: tzinfo | None = None) -> str:
    """The devices table with the log's columns (last seen, link, last window, open alerts)."""
    rows = []
    for d in listings:
        p, a = d.paired, d.activity
        w = a.last_window if a is not None else None
        address = p.address if p is not None else None
        kind = p.kind if p is not None else None
        rows.append(
            [
                d.device_id,
                address or "-",
                kind or "-",
                "yes"
                if p is not None
                else f"renamed: {d.renamed_to}"
                if d.renamed_to
                else "not paired",
                f"{_local(a.last_seen, tz)} ({_ago(now - a.last_seen)})" if a else "never",
                a.link if a is not None else "-",
                f"{w.battery}%" if w is not None and w.battery is not None else "-",
                f"{w.hr_bpm:.0f}" if w is not None and w.hr_bpm is not None else "-",
                (w.activity or "-") if w is not None else "-",
                str(a.windows) if a is not None else "0",
                ",".join(a.open_alerts) if a is not None and a.open_alerts else "-",
            ]
        )
    headers = [
        "ID",
        "ADDRESS",
        "KIND",
        "PAIRED",
        "LAST SEEN",
        "LINK",
        "BATTERY",
        "HR",
        "ACTIVITY",
        "WINDOWS",
        "OPEN ALERTS",
    ]
    return format_table(headers, rows, right=(6, 7, 9))


def devices_json(listings: Iterable[DeviceListing]) -> list[dict[str, Any]]:
    """JSON-ready devices: the registry fields (null when not paired) and ``log``."""
    out = []
    for d in listings:
        p, a = d.paired, d.activity
        out.append(
            {
                "id": d.device_id,
                "address": p.address if p is not None else None,
                "kind": p.kind if p is not None else None,
                "name": p.name if p is not None else None,
                "paired": p is not None,
                "paired_at": p.paired_at if p is not None else None,
                "renamed_from": list(p.renamed_from) if p is not None else [],
                "renamed_to": d.renamed_to,
                "log": _activity_json(a) if a is not None else None,
            }
        )
    return out


def _activity_json(a: DeviceActivity) -> dict[str, Any]:
    w = a.last_window
    return {
        "first_seen": _iso(a.first_seen),
        "last_seen": _iso(a.last_seen),
        "link": a.link,
        "windows": a.windows,
        "open_alerts": list(a.open_alerts),
        "last_window": None
        if w is None
        else {
            "id": w.id,
            "received_at": _iso(w.received_at),
            "seq": w.seq,
            "kind": w.kind,
            "hr_bpm": w.hr_bpm,
            "hr_source": w.hr_source,
            "activity": w.activity,
            "activity_conf": w.activity_conf,
            "signal_quality": w.signal_quality,
            "battery": w.battery,
            "offloaded": w.offloaded,
            "model_id": w.model_id,
        },
    }


# --- small helpers -------------------------------------------------------------------------------


def _by_id(a: DeviceActivity) -> str:
    return a.device_id


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _local(t: float, tz: tzinfo | None) -> str:
    when = datetime.fromtimestamp(t, tz) if tz is not None else datetime.fromtimestamp(t)
    return when.strftime(_TIME_FORMAT)


def _iso(t: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds, as in the MQTT payloads."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s ago"
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
