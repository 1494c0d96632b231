"""The event log's async API: `Store`, an async context manager over one SQLite file.

Writes go to the single writer thread (gatewayd.store.writer) and resolve once committed.
Reads run on a small pool of reader threads, each with its own read-only connection; WAL lets
them read while the writer commits. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import sqlite_utils
import structlog

from gatewayd.config import StoreConfig
from gatewayd.ids import new_event_id
from gatewayd.store.errors import StoreError, translate_error
from gatewayd.store.open import IntegrityCheck, OpenedFile, Synchronous, connect_reader, open_writer
from gatewayd.store.records import (
    DeviceRecord,
    NewEvent,
    OutboxItem,
    RetentionResult,
    StoredEvent,
    StoredWindow,
    StoreRecovery,
    StoreStats,
    WindowRecord,
)
from gatewayd.store.retention import RetentionPolicy, run_retention
from gatewayd.store.writer import Writer

__all__ = ["Store", "StoreOptions", "event_from_row"]

log = structlog.get_logger("gatewayd.store")
T = TypeVar("T")

_MB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Tuning that is not in the config file (defaults suit a Raspberry Pi)."""

    #: NORMAL: durable against process crashes, may lose the last commits on power loss.
    #: FULL: fsync every commit (every batch), durable against power loss too. docs/store.md.
    synchronous: Synchronous = "NORMAL"
    #: Group commit: at most this many operations per transaction...
    max_batch: int = 256
    #: ...and wait at most this long for more after the first (0: take only what is queued).
    max_wait_ms: float = 0.0
    #: Bound on operations submitted but not yet committed; beyond it writers wait.
    max_pending: int = 4096
    busy_timeout_ms: int = 5000
    #: At open: "quick" (PRAGMA quick_check), "full" (integrity_check, slower), or "off".
    integrity_check: IntegrityCheck = "quick"
    #: How often the writer runs retention when it has nothing else to do.
    retention_interval_s: float = 600.0
    reader_threads: int = 2
    #: Hard cap on the file in pages (PRAGMA max_page_count); writes past it fail. For tests.
    max_page_count: int | None = None
    #: Wall clock (Unix seconds), injectable for tests.
    clock: Callable[[], float] = time.time


def _dumps(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    # allow_nan=False: NaN is not JSON, and SQLite's json_valid would reject the row later.
    return json.dumps(value, separators=(",", ":"), allow_nan=False, sort_keys=True)


_UPSERT_SEEN: Final = (
    "INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)"
)
_INSERT_DEVICE_IF_NEW: Final = (
    "INSERT OR IGNORE INTO devices (device_id, first_seen, last_seen) VALUES (?, ?, ?)"
)
_UPSERT_DEVICE: Final = (
    "INSERT INTO devices (device_id, address, kind, name, first_seen, last_seen, last_state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET"
    " address = coalesce(excluded.address, address),"
    " kind = coalesce(excluded.kind, kind),"
    " name = coalesce(excluded.name, name),"
    " last_seen = max(last_seen, excluded.last_seen),"
    " last_state = coalesce(excluded.last_state, last_state)"
)
_INSERT_WINDOW: Final = (
    "INSERT INTO windows (device_id, seq, t_ms, received_at, kind, hr_bpm, hr_source, activity,"
    " activity_conf, entropy_bits, signal_quality, battery, offloaded, model_id, result)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RAW: Final = (
    "INSERT INTO raw_windows (window_id, received_at, sample_format, bvp_rate_hz, acc_rate_hz,"
    " acc_lsb_per_g, bvp, acc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (id, device_id, kind, severity, state, created_at, t_ms, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX: Final = (
    "INSERT INTO outbox (event_id, device_id, topic, created_at) VALUES (?, ?, ?, ?)"
)
_EVENT_COLUMNS: Final = (
    "e.id, e.device_id, e.kind, e.severity, e.state, e.created_at, e.t_ms, e.payload"
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


class Store:
    """The durable event log. Use ``async with Store.open(path, config) as store``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        options: StoreOptions | None = None,
    ) -> None:
        self.path = Path(path)
        self.config = config if config is not None else StoreConfig(path=self.path)
        self.options = options if options is not None else StoreOptions()
        self._entered = False
        self._closed = False
        self._opened: OpenedFile | None = None
        self._writer: Writer | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._pending: asyncio.Semaphore | None = None
        self._backpressure_waits = 0
        self._last_retention: RetentionResult | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        options: StoreOptions | None = None,
    ) -> Store:
        """A store on ``path`` (``config.path`` is not consulted); enter it to open the file."""
        return cls(path, config, options)

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise StoreError(self.path, "this Store was already entered; create a new one")
        self._entered = True
        options = self.options
        self._pending = asyncio.Semaphore(options.max_pending)

        def connect() -> tuple[sqlite3.Connection, OpenedFile]:
            opened = open_writer(
                self.path,
                synchronous=options.synchronous,
                busy_timeout_ms=options.busy_timeout_ms,
                integrity_check=options.integrity_check,
                max_page_count=options.max_page_count,
                clock=options.clock,
            )
            return opened.conn, opened

        self._writer = Writer(
            self.path,
            connect,
            max_batch=options.max_batch,
            max_wait_s=options.max_wait_ms / 1000,
            maintenance=self._maintain,
            maintenance_interval_s=options.retention_interval_s,
        )
        try:
            opened: OpenedFile = await asyncio.wrap_future(self._writer.start())
        except StoreError:
            raise
        except Exception as exc:
            raise translate_error(exc, self.path, "open") from exc
        self._opened = opened
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.reader_threads, thread_name_prefix="gatewayd-store-reader"
        )
        log.info(
            "store_open",
            path=str(self.path),
            schema_version=opened.schema_version,
            synchronous=options.synchronous,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            # shield: even if our caller is cancelled, queued writes still commit.
            await asyncio.shield(asyncio.wrap_future(self._writer.stop()))
            await asyncio.to_thread(self._writer.join)
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, wait=True)
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()

    @property
    def recovery(self) -> StoreRecovery | None:
        """Set when the file was corrupt at open and moved aside: raise an alert with it."""
        return self._opened.recovery if self._opened else None

    @property
    def migrated_from(self) -> int | None:
        """The schema version the file had before this open (0 for a new file)."""
        return self._opened.migrated_from if self._opened else None

    # --- writes --------------------------------------------------------------------------------

    async def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        writer, pending = self._writer, self._pending
        if writer is None or pending is None or self._closed or self._opened is None:
            raise StoreError(self.path, "the store is not open")
        if pending.locked():
            self._backpressure_waits += 1
        await pending.acquire()
        try:
            future = asyncio.wrap_future(writer.submit(apply))
        except BaseException:
            pending.release()
            raise
        future.add_done_callback(lambda _: pending.release())
        # shield: cancelling the caller does not revoke a write that is already queued.
        result: T = await asyncio.shield(future)
        return result

    async def record_window(self, window: WindowRecord) -> int:
        """Store one window (and its raw samples if the store keeps them); return its id."""
        w = window
        row = (
            w.device_id,
            w.seq,
            w.t_ms,
            w.received_at,
            w.kind,
            w.hr_bpm,
            w.hr_source,
            w.activity,
            w.activity_conf,
            w.entropy_bits,
            w.signal_quality,
            w.battery,
            int(w.offloaded),
            w.model_id,
            _dumps(w.result),
        )
        raw = w.raw if self.config.keep_raw_windows else None

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute(_UPSERT_SEEN, (w.device_id, w.received_at, w.received_at))
            window_id = conn.execute(_INSERT_WINDOW, row).lastrowid
            assert window_id is not None
            if raw is not None:
                conn.execute(
                    _INSERT_RAW,
                    (
                        window_id,
                        w.received_at,
                        raw.sample_format,
                        raw.bvp_rate_hz,
                        raw.acc_rate_hz,
                        raw.acc_lsb_per_g,
                        raw.bvp,
                        raw.acc,
                    ),
                )
            return window_id

        return await self._write(apply)

    async def append_event(self, event: NewEvent, *, topic: str) -> str:
        """Append an event and its outbox row (to ``topic``) in one transaction; return its id.

        When this returns, both are committed: the publisher will deliver the event at least
        once, even after a crash. The id (UUIDv7) is drawn on the writer thread when the event
        has none, so ids increase in outbox order.
        """
        if not topic:
            raise ValueError("an outbox row needs a topic")
        payload = _dumps(event.payload) or "{}"
        clock = self.options.clock

        def apply(conn: sqlite3.Connection) -> str:
            created_at = event.created_at if event.created_at is not None else clock()
            event_id = event.id or new_event_id(int(created_at * 1000))
            if event.device_id is not None:
                conn.execute(_INSERT_DEVICE_IF_NEW, (event.device_id, created_at, created_at))
            conn.execute(
                _INSERT_EVENT,
                (
                    event_id,
                    event.device_id,
                    event.kind,
                    event.severity,
                    event.state,
                    created_at,
                    event.t_ms,
                    payload,
                ),
            )
            conn.execute(_INSERT_OUTBOX, (event_id, event.device_id, topic, created_at))
            return event_id

        return await self._write(apply)

    async def upsert_device(
        self,
        device_id: str,
        *,
        address: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        state: Mapping[str, Any] | None = None,
        seen_at: float | None = None,
    ) -> None:
        """Create or update a device; fields left None keep their stored value."""
        state_json = _dumps(state)
        clock = self.options.clock

        def apply(conn: sqlite3.Connection) -> None:
            at = seen_at if seen_at is not None else clock()
            conn.execute(_UPSERT_DEVICE, (device_id, address, kind, name, at, at, state_json))

        await self._write(apply)

    async def mark_published(self, event_ids: Iterable[str], *, at: float | None = None) -> int:
        """Mark outbox rows done (after the broker's PUBACK); return how many changed."""
        ids = [(i,) for i in event_ids]
        clock = self.options.clock

        def apply(conn: sqlite3.Connection) -> int:
            done_at = at if at is not None else clock()
            changed = 0
            for (event_id,) in ids:
                changed += conn.execute(
                    "UPDATE outbox SET done_at = ? WHERE event_id = ? AND done_at IS NULL",
                    (done_at, event_id),
                ).rowcount
            return changed

        return await self._write(apply)

    async def record_attempts(self, event_ids: Iterable[str]) -> None:
        """Count one publish attempt for each event (for stats and back-off)."""
        ids = [(i,) for i in event_ids]

        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE event_id = ?", ids)

        await self._write(apply)

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed."""
        await self._write(lambda conn: None)

    async def run_retention(self, now: float | None = None) -> RetentionResult:
        """Apply retention now (the writer also runs it every retention_interval_s)."""
        clock = self.options.clock

        def apply(conn: sqlite3.Connection) -> RetentionResult:
            return run_retention(conn, self._policy(), now if now is not None else clock())

        result = await self._write(apply)
        self._note_retention(result)
        return result

    def _policy(self) -> RetentionPolicy:
        c = self.config
        return RetentionPolicy(
            max_age_s=c.retention_days * 86400.0,
            raw_max_age_s=c.raw_retention_hours * 3600.0,
            keep_raw=c.keep_raw_windows,
            max_bytes=c.max_size_mb * _MB,
        )

    def _maintain(self, conn: sqlite3.Connection) -> None:
        # On the writer thread, between batches, in its own transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = run_retention(conn, self._policy(), self.options.clock())
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._note_retention(result)

    def _note_retention(self, result: RetentionResult) -> None:
        self._last_retention = result
        if result.over_size:
            log.warning(
                "store_over_size",
                path=str(self.path),
                size_bytes=result.size_bytes,
                max_size_mb=self.config.max_size_mb,
                reason="only events not yet published are left; they are never deleted",
            )
        elif result.windows or result.raw_windows or result.events:
            log.info(
                "store_retention",
                windows=result.windows,
                raw_windows=result.raw_windows,
                events=result.events,
                freed_pages=result.freed_pages,
            )

    # --- reads ---------------------------------------------------------------------------------

    def _reader(self) -> sqlite_utils.Database:
        db: sqlite_utils.Database | None = getattr(self._reader_local, "db", None)
        if db is None:
            conn = connect_reader(self.path, self.options.busy_timeout_ms)
            with self._reader_lock:
                self._reader_conns.append(conn)
            db = sqlite_utils.Database(conn)
            self._reader_local.db = db
        return db

    async def _read(self, query: Callable[[sqlite_utils.Database], T]) -> T:
        if self._readers is None or self._closed:
            raise StoreError(self.path, "the store is not open")

        def run() -> T:
            try:
                return query(self._reader())
            except sqlite3.Error as exc:
                raise translate_error(exc, self.path, "read") from exc

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def pending_outbox(
        self, limit: int = 100, *, device_id: str | None = None, after: int | None = None
    ) -> list[OutboxItem]:
        """Outbox rows not yet published, oldest first (so in creation order per device).

        ``after``: only rows with ``outbox_id`` greater than this (a publisher's cursor over
        what it already has in flight).
        """
        where = ["o.done_at IS NULL"]
        params: list[Any] = []
        if device_id is not None:
            where.append("o.device_id = ?")
            params.append(device_id)
        if after is not None:
            where.append("o.id > ?")
            params.append(after)
        # CROSS JOIN keeps outbox as the outer loop, walking the partial index of pending rows
        # in order, instead of scanning every event and sorting.
        sql = (
            f"SELECT o.id AS outbox_id, o.topic, o.attempts, {_EVENT_COLUMNS}"  # noqa: S608
            f" FROM outbox o CROSS JOIN events e ON e.id = o.event_id WHERE {' AND '.join(where)}"
            " ORDER BY o.id LIMIT ?"
        )
        params.append(limit)

        def query(db: sqlite_utils.Database) -> list[OutboxItem]:
            return [
                OutboxItem(
                    outbox_id=row["outbox_id"],
                    topic=row["topic"],
                    attempts=row["attempts"],
                    event=event_from_row(row),
                )
                for row in db.query(sql, params)
            ]

        return await self._read(query)

    async def events(
        self,
        device: str | None = None,
        since: float | None = None,
        kind: str | None = None,
        limit: int | None = None,
        *,
        newest_first: bool = False,
    ) -> list[StoredEvent]:
        """Events, filtered, in creation order (or newest first)."""
        where, params = ["1"], list[Any]()
        if device is not None:
            where.append("e.device_id = ?")
            params.append(device)
        if since is not None:
            where.append("e.created_at >= ?")
            params.append(since)
        if kind is not None:
            where.append("e.kind = ?")
            params.append(kind)
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events e WHERE {' AND '.join(where)}"  # noqa: S608
            f" ORDER BY e.rowid {'DESC' if newest_first else 'ASC'}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return await self._read(lambda db: [event_from_row(row) for row in db.query(sql, params)])

    async def windows(
        self, device: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[StoredWindow]:
        """Windows, filtered, oldest first."""
        where, params = ["1"], list[Any]()
        if device is not None:
            where.append("w.device_id = ?")
            params.append(device)
        if since is not None:
            where.append("w.received_at >= ?")
            params.append(since)
        sql = (
            "SELECT w.*, r.window_id IS NOT NULL AS has_raw FROM windows w"  # noqa: S608
            f" LEFT JOIN raw_windows r ON r.window_id = w.id WHERE {' AND '.join(where)}"
            " ORDER BY w.id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def query(db: sqlite_utils.Database) -> list[StoredWindow]:
            out = []
            for row in db.query(sql, params):
                row["offloaded"] = bool(row["offloaded"])
                row["has_raw"] = bool(row["has_raw"])
                row["result"] = json.loads(row["result"]) if row["result"] else None
                out.append(StoredWindow(**row))
            return out

        return await self._read(query)

    async def devices(self) -> list[DeviceRecord]:
        """Every device seen, by id."""

        def query(db: sqlite_utils.Database) -> list[DeviceRecord]:
            out = []
            for row in db.query("SELECT * FROM devices ORDER BY device_id"):
                row["last_state"] = json.loads(row["last_state"]) if row["last_state"] else None
                out.append(DeviceRecord(**row))
            return out

        return await self._read(query)

    async def stats(self) -> StoreStats:
        """Counts, sizes and writer counters."""
        assert self._writer is not None
        assert self._opened is not None
        counters = self._writer.counters
        opened = self._opened

        def size(suffix: str) -> int:
            try:
                return Path(f"{self.path}{suffix}").stat().st_size
            except FileNotFoundError:
                return 0

        def query(db: sqlite_utils.Database) -> StoreStats:
            def one(sql: str) -> Any:
                row = db.execute(sql).fetchone()
                return None if row is None else row[0]

            page_size = one("PRAGMA page_size")
            live = page_size * (one("PRAGMA page_count") - one("PRAGMA freelist_count"))
            return StoreStats(
                path=self.path,
                schema_version=opened.schema_version,
                file_bytes=size(""),
                wal_bytes=size("-wal"),
                live_bytes=live,
                devices=one("SELECT count(*) FROM devices"),
                windows=one("SELECT count(*) FROM windows"),
                raw_windows=one("SELECT count(*) FROM raw_windows"),
                events=one("SELECT count(*) FROM events"),
                outbox_pending=one("SELECT count(*) FROM outbox WHERE done_at IS NULL"),
                oldest_pending_at=one(
                    "SELECT created_at FROM outbox WHERE done_at IS NULL ORDER BY id LIMIT 1"
                ),
                batches=counters.batches,
                items=counters.items,
                largest_batch=counters.largest_batch,
                failed_items=counters.failed_items,
                backpressure_waits=self._backpressure_waits,
                last_retention=self._last_retention,
                recovery=opened.recovery,
            )

        return await self._read(query)
