"""The event log's async API: `Store`, an async context manager over one SQLite file.

Writes go to the single writer thread (gatewayd.store.writer) and resolve once committed -- or,
in degraded mode, once held in memory (see `Store.problem`). Reads run on a small pool of reader
threads, each with its own read-only connection; WAL lets them read while the writer commits.
Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import structlog

from gatewayd.config import StoreConfig
from gatewayd.ids import new_event_id
from gatewayd.store import queries
from gatewayd.store.errors import (
    RecordRejectedError,
    StoreError,
    StoreReentryError,
    translate_error,
)
from gatewayd.store.lock import EventLogLock
from gatewayd.store.open import IntegrityCheck, OpenedFile, Synchronous, connect_reader, open_writer
from gatewayd.store.records import (
    DeviceCursor,
    EventQuery,
    LoggedEvent,
    NewEvent,
    OutboxItem,
    RetentionResult,
    StoredEvent,
    StoredWindow,
    StoreProblem,
    StoreRecovery,
    StoreStats,
    WindowRecord,
    gateway_event,
)
from gatewayd.store.retention import RetentionPolicy, run_retention
from gatewayd.store.values import Checked
from gatewayd.store.writer import DEGRADED_KIND, Op, Writer, WriterLimits

__all__ = ["Store", "StoreOptions"]

log = structlog.get_logger("gatewayd.store")
T = TypeVar("T")

_MB: Final = 1024 * 1024
_EVENT_ID_LENGTH: Final = 36


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
    #: Bound on operations submitted but not yet committed (or held); beyond it writers wait.
    max_pending: int = 4096
    busy_timeout_ms: int = 5000
    #: At open: "quick" (PRAGMA quick_check), "full" (integrity_check, slower), or "off".
    integrity_check: IntegrityCheck = "quick"
    #: How often the writer runs retention when it has nothing else to do.
    retention_interval_s: float = 600.0
    reader_threads: int = 2
    #: Hard cap on the file in pages (PRAGMA max_page_count); writes past it fail. For tests.
    max_page_count: int | None = None
    #: Degraded mode: windows held in memory at most (beyond: dropped and counted; events are
    #: never dropped), and the retry backoff (base, growing 1.8x to the cap).
    max_held_windows: int = 20_000
    retry_base_s: float = 0.25
    retry_cap_s: float = 5.0
    #: How often the writer checks that the file at the path is still the one it has open.
    file_check_interval_s: float = 1.0
    #: close(): how long to keep retrying held writes before giving up on them (logged).
    close_timeout_s: float = 10.0
    #: Wall clock (Unix seconds), injectable for tests.
    clock: Callable[[], float] = time.time


_UPSERT_DEVICE: Final = (
    "INSERT INTO devices (device_id, first_seen, last_seen, boot_id, next_seq)"
    " VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen),"
    " boot_id = coalesce(excluded.boot_id, boot_id),"
    " next_seq = coalesce(excluded.next_seq, next_seq)"
)
_INSERT_DEVICE_IF_NEW: Final = (
    "INSERT OR IGNORE INTO devices (device_id, first_seen, last_seen) VALUES (?, ?, ?)"
)
_INSERT_WINDOW: Final = (
    "INSERT INTO windows (id, device_id, seq, t_ms, received_at, kind, hr_bpm, hr_source,"
    " activity, activity_conf, entropy_bits, signal_quality, battery, offloaded, model_id,"
    " result, invalid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RAW: Final = (
    "INSERT INTO raw_windows (window_id, received_at, sample_format, bvp_rate_hz, acc_rate_hz,"
    " acc_lsb_per_g, bvp, acc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (id, device_id, kind, severity, state, created_at, t_ms, payload,"
    " invalid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX: Final = "INSERT INTO outbox (event_id, created_at) VALUES (?, ?)"


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
        self._reader_generation = 0
        # Reads in progress; the writer waits for none before closing the readers' connections.
        self._read_gate = threading.Condition()
        self._active_reads = 0
        self._readers_closing = False
        self._pending: asyncio.Semaphore | None = None
        self._backpressure_waits = 0
        self._last_retention: RetentionResult | None = None
        self._next_window_id = 0
        self._invalid_values = 0
        self._warned: set[tuple[str | None, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._problem_version = 0
        self._problem_changed = asyncio.Event()
        self._lock: EventLogLock | None = None

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
            raise StoreReentryError(
                self.path, "this Store was already entered; create a new one to open it again"
            )
        self._entered = True
        options = self.options
        self._loop = asyncio.get_running_loop()
        self._pending = asyncio.Semaphore(options.max_pending)
        # Before anything touches the file: a second gatewayd must not move it aside, migrate
        # it or publish its outbox. EventLogInUseError says who holds it.
        self._lock = await asyncio.to_thread(EventLogLock.acquire, self.path)

        def connect() -> OpenedFile:
            return open_writer(
                self.path,
                synchronous=options.synchronous,
                busy_timeout_ms=options.busy_timeout_ms,
                integrity_check=options.integrity_check,
                max_page_count=options.max_page_count,
                clock=options.clock,
            )

        self._writer = Writer(
            self.path,
            connect,
            limits=WriterLimits(
                max_batch=options.max_batch,
                max_wait_s=options.max_wait_ms / 1000,
                max_held_windows=options.max_held_windows,
                retry_base_s=options.retry_base_s,
                retry_cap_s=options.retry_cap_s,
                busy_timeout_ms=options.busy_timeout_ms,
                check_interval_s=options.file_check_interval_s,
                close_timeout_s=options.close_timeout_s,
                maintenance_interval_s=options.retention_interval_s,
            ),
            event_op=lambda event: self._event_op(event)(),
            clock=options.clock,
            maintenance=self._maintain,
            on_change=self._writer_changed,
            close_readers=self._close_readers,
        )
        try:
            opened: OpenedFile = await asyncio.wrap_future(self._writer.start())
        except BaseException as exc:
            self._lock.release()
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            raise translate_error(exc, self.path, "open") from exc
        self._opened = opened
        self._next_window_id = opened.max_window_id
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.reader_threads, thread_name_prefix="gatewayd-store-reader"
        )
        log.info(
            "store_open",
            path=str(self.path),
            schema_version=opened.schema_version,
            synchronous=options.synchronous,
        )
        await self._close_stale_degraded()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is queued (held writes: retried up to close_timeout_s), stop the writer,
        close every connection. Bounded: returns within about close_timeout_s + busy_timeout."""
        if self._closed:
            return
        self._closed = True
        # Readers first: then the writer's connection is the last one, and closing it
        # checkpoints the WAL into the file and removes it.
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, wait=True)
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
        writer = self._writer
        if writer is not None:
            bound = self.options.close_timeout_s + self.options.busy_timeout_ms / 1000 + 5.0
            try:
                # shield: even if our caller is cancelled, queued writes still commit.
                async with asyncio.timeout(bound):
                    await asyncio.shield(asyncio.wrap_future(writer.stop()))
                    await asyncio.to_thread(writer.join)
            except TimeoutError:
                log.critical("store_close_timed_out", path=str(self.path), timeout_s=bound)
                return  # the writer may still write: keep the lock until the process exits
        if self._lock is not None:
            self._lock.release()

    @property
    def recovery(self) -> StoreRecovery | None:
        """Set when the file was corrupt at open and moved aside: raise an alert with it."""
        return self._opened.recovery if self._opened else None

    @property
    def migrated_from(self) -> int | None:
        """The schema version the file had before this open (0 for a new file)."""
        return self._opened.migrated_from if self._opened else None

    # --- degraded mode -------------------------------------------------------------------------

    @property
    def problem(self) -> StoreProblem | None:
        """Why writes are held in memory (disk full, locked, ...), or None when all is well."""
        return self._writer.problem() if self._writer is not None else None

    @property
    def problem_version(self) -> int:
        """Bumped each time `problem` appears, changes cause, or clears (and on a reopen)."""
        return self._problem_version

    async def wait_problem_change(self, version: int) -> int:
        """Wait until `problem_version` differs from ``version``; return the new version."""
        while self._problem_version == version:
            await self._problem_changed.wait()
        return self._problem_version

    def _close_readers(self) -> None:
        # On the writer thread, before the old file's last connection closes: no reader may
        # keep it open (see Writer._reopen). Readers reconnect to the file at the path.
        with self._read_gate:
            self._readers_closing = True
            self._read_gate.wait_for(lambda: self._active_reads == 0)
            self._reader_generation += 1
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
            self._readers_closing = False
            self._read_gate.notify_all()

    def _writer_changed(self) -> None:
        # On the writer thread: the problem changed, or the file was reopened.
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                self._loop.call_soon_threadsafe(self._bump_problem_version)

    def _bump_problem_version(self) -> None:
        self._problem_version += 1
        changed, self._problem_changed = self._problem_changed, asyncio.Event()
        changed.set()

    async def _close_stale_degraded(self) -> None:
        """A degraded episode left open by the last run (stopped while degraded) is cleared."""

        latest = await self.latest_gateway_event(DEGRADED_KIND)
        if latest is not None and latest.state == "raised":
            await self.append_event(
                gateway_event(
                    DEGRADED_KIND,
                    "critical",
                    "event log writes work again (gatewayd was stopped while they did not)",
                    self.options.clock(),
                    state="cleared",
                )
            )

    async def latest_gateway_event(self, kind: str) -> StoredEvent | None:
        """The latest gateway-level event (no device) of ``kind``, or None."""
        return await self._read(lambda conn: queries.latest_gateway_event(conn, kind))

    async def check_file(self) -> bool:
        """Check now that the file at the path is the one open (the writer also does so every
        file_check_interval_s); True when it was deleted or replaced and a fresh one started."""
        writer = self._open_writer()
        result: bool = await asyncio.wrap_future(writer.call(writer.check_file))
        return result

    # --- writes --------------------------------------------------------------------------------

    def _open_writer(self) -> Writer:
        writer = self._writer
        if writer is None or self._closed or self._opened is None:
            raise StoreError(self.path, "the store is not open")
        return writer

    async def _submit(self, make: Callable[[], Op]) -> Any:
        return await (await self._enqueue(make))

    async def _enqueue(self, make: Callable[[], Op]) -> asyncio.Future[Any]:
        """Queue ``make()``'s op for the writer (waits while `StoreOptions` bounds are full);
        return the future of its outcome."""
        writer, pending = self._open_writer(), self._pending
        assert pending is not None
        if pending.locked():
            self._backpressure_waits += 1
        await pending.acquire()
        loop = self._loop
        assert loop is not None
        # The caller's future, apart from the op's: cancelling the caller does not revoke a
        # write that is already queued (the op still commits, and only then frees its place).
        waiter: asyncio.Future[Any] = loop.create_future()
        try:
            # Built after the wait and submitted with no await in between: ids drawn here
            # increase in queue (so outbox) order.
            done = writer.submit(make())
        except BaseException:
            pending.release()
            raise
        done.add_done_callback(lambda _: self._resolve(loop, done, waiter))
        return waiter

    def _resolve(
        self,
        loop: asyncio.AbstractEventLoop,
        done: concurrent.futures.Future[Any],
        waiter: asyncio.Future[Any],
    ) -> None:
        """On the writer thread: an op is done; hand its outcome to the loop (one wake-up)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(self._deliver, done, waiter)

    def _deliver(self, done: concurrent.futures.Future[Any], waiter: asyncio.Future[Any]) -> None:
        """On the loop: free the op's place in the queue, resolve its caller (unless cancelled)."""
        assert self._pending is not None
        self._pending.release()
        if waiter.cancelled():
            return
        if done.cancelled():
            waiter.cancel()
        elif (exc := done.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    def _device(self, device_id: object, field: str = "device_id") -> str:
        if not isinstance(device_id, str) or not device_id:
            raise RecordRejectedError(self.path, None, field, device_id, "a device id must be text")
        try:
            device_id.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordRejectedError(
                self.path, None, field, device_id, "not valid Unicode"
            ) from None
        return device_id

    def _note_invalid(self, device: str | None, check: Checked) -> None:
        if not check.problems:
            return
        self._invalid_values += len(check.problems)
        fresh = [f for f in check.problems if (device, f) not in self._warned]
        if fresh:
            self._warned.update((device, f) for f in fresh)
            # Once per device and field: an unset clock would otherwise log every window.
            log.warning("store_value_invalid", device=device, invalid=check.problems,
                        stored="as NULL, named in the row's invalid column")  # fmt: skip

    async def record_window(
        self, window: WindowRecord, *, cursor: DeviceCursor | None = None
    ) -> int:
        """Store one window (raw samples too if the store keeps them) and, in the same
        transaction, the device's resume ``cursor``; return the window's id.

        A value SQLite cannot hold (an int beyond 64 bits, NaN, ...) is stored as NULL and named
        in the row's ``invalid`` column; RecordRejectedError only for an unusable device id or kind.
        """
        result: int = await self._submit(self._window_op(window, cursor))
        return result

    async def record_windows(
        self, windows: Sequence[tuple[WindowRecord, DeviceCursor | None]]
    ) -> list[int | Exception]:
        """`record_window` for each of ``windows`` (window, cursor), in order: all are queued
        before the first is awaited, so the writer commits them together. Each answer is the
        window's id or what that window alone met (a StoreError, or the bug it hit); the other
        windows are stored all the same."""
        queued: list[asyncio.Future[Any] | Exception] = []
        for window, cursor in windows:
            try:
                queued.append(await self._enqueue(self._window_op(window, cursor)))
            except Exception as exc:  # noqa: BLE001 - that window's answer, not everyone's
                queued.append(exc)
        answers: list[int | Exception] = []
        for outcome in queued:
            if isinstance(outcome, Exception):
                answers.append(outcome)
                continue
            try:
                answers.append(await outcome)
            except Exception as exc:  # noqa: BLE001 - as above
                answers.append(exc)
        return answers

    def _window_op(self, window: WindowRecord, cursor: DeviceCursor | None) -> Callable[[], Op]:
        """Check ``window`` now; the returned function draws its id and builds its Op."""
        w = window
        device = self._device(w.device_id)
        if w.kind not in ("summary", "window"):
            raise RecordRejectedError(
                self.path, device, "kind", w.kind, "must be summary or window"
            )
        check = Checked()
        received_at = check.real("received_at", w.received_at)
        if received_at is None:
            received_at = self.options.clock()
        boot_id = next_seq = None
        if cursor is not None:
            boot_id = check.integer("cursor.boot_id", cursor.boot_id)
            next_seq = check.integer("cursor.next_seq", cursor.next_seq)
            if boot_id is None or next_seq is None:
                boot_id = next_seq = None
        values = (
            check.integer("seq", w.seq),
            check.integer("t_ms", w.t_ms),
            received_at,
            w.kind,
            check.real("hr_bpm", w.hr_bpm),
            check.text("hr_source", w.hr_source),
            check.text("activity", w.activity),
            check.real("activity_conf", w.activity_conf),
            check.real("entropy_bits", w.entropy_bits),
            check.integer("signal_quality", w.signal_quality),
            check.integer("battery", w.battery),
            int(bool(w.offloaded)),
            check.text("model_id", w.model_id),
            check.json("result", w.result),
        )
        raw = w.raw if self.config.keep_raw_windows else None
        raw_values = None
        if raw is not None:
            rates = [
                check.integer(f"raw.{name}", getattr(raw, name))
                for name in ("bvp_rate_hz", "acc_rate_hz", "acc_lsb_per_g")
            ]
            if None not in rates:
                raw_values = (received_at, raw.sample_format, *rates, raw.bvp, raw.acc)
        invalid = check.invalid
        self._note_invalid(device, check)
        device_row = (device, received_at, received_at, boot_id, next_seq)

        def make() -> Op:
            self._next_window_id += 1
            window_id = self._next_window_id

            def apply(conn: sqlite3.Connection) -> int:
                conn.execute(_UPSERT_DEVICE, device_row)
                conn.execute(_INSERT_WINDOW, (window_id, device, *values, invalid))
                if raw_values is not None:
                    conn.execute(_INSERT_RAW, (window_id, *raw_values))
                return window_id

            def cursor_only(conn: sqlite3.Connection) -> None:
                conn.execute(_UPSERT_DEVICE, device_row)

            return Op(
                apply,
                "window",
                held_value=window_id,
                device_id=device,
                cursor_only=cursor_only if boot_id is not None else None,
            )

        return make

    def _event_op(self, event: NewEvent, cursor: DeviceCursor | None = None) -> Callable[[], Op]:
        """Check ``event`` now; the returned function draws its id and builds its Op."""
        device = None if event.device_id is None else self._device(event.device_id)
        check = Checked()
        boot_id = next_seq = None
        if cursor is not None and device is not None:
            boot_id = check.integer("cursor.boot_id", cursor.boot_id)
            next_seq = check.integer("cursor.next_seq", cursor.next_seq)
        texts = {}
        for name in ("kind", "severity", "state"):
            value = check.text(name, getattr(event, name))
            if not value:
                raise RecordRejectedError(self.path, device, name, getattr(event, name), "required")
            texts[name] = value
        if event.id is not None and (
            not isinstance(event.id, str) or len(event.id) != _EVENT_ID_LENGTH
        ):
            raise RecordRejectedError(self.path, device, "id", event.id, "not a UUID string")
        t_ms = check.integer("t_ms", event.t_ms)
        created = None if event.created_at is None else check.real("created_at", event.created_at)
        payload = check.json("payload", event.payload) or "{}"
        invalid = check.invalid
        self._note_invalid(device, check)
        clock = self.options.clock

        def make() -> Op:
            created_at = created if created is not None else clock()
            event_id = event.id or new_event_id(int(created_at * 1000))
            stored = StoredEvent(
                event_id, device, texts["kind"], texts["severity"], texts["state"], created_at,
                t_ms, json.loads(payload),
            )  # fmt: skip

            def apply(conn: sqlite3.Connection) -> str:
                if device is not None:
                    conn.execute(_INSERT_DEVICE_IF_NEW, (device, created_at, created_at))
                if boot_id is not None and next_seq is not None:
                    conn.execute(
                        _UPSERT_DEVICE, (device, created_at, created_at, boot_id, next_seq)
                    )
                conn.execute(
                    _INSERT_EVENT,
                    (event_id, device, texts["kind"], texts["severity"], texts["state"],
                     created_at, t_ms, payload, invalid),
                )  # fmt: skip
                conn.execute(_INSERT_OUTBOX, (event_id, created_at))
                return event_id

            return Op(apply, "event", held_value=event_id, device_id=device, event=stored)

        return make

    async def append_event(self, event: NewEvent, *, cursor: DeviceCursor | None = None) -> str:
        """Append an event and its outbox row in one transaction; return its id.

        ``cursor``: the device's resume point moves with the event (a loss: its range is given up
        and not asked for again after a restart).

        When this returns, both are committed (or, in degraded mode, held in memory and shown by
        `pending_outbox`): the publisher delivers the event at least once. The id (UUIDv7) is
        drawn when the event has none, in queue order, so ids increase in outbox order.
        """
        result: str = await self._submit(self._event_op(event, cursor))
        return result

    async def mark_published(self, event_ids: Iterable[str], *, at: float | None = None) -> int:
        """Mark outbox rows done (after the broker's PUBACK); return how many changed (while
        held in memory: how many were given)."""
        ids = tuple(event_ids)
        clock = self.options.clock

        def make() -> Op:
            done_at = at if at is not None else clock()

            def apply(conn: sqlite3.Connection) -> int:
                changed = 0
                for event_id in ids:
                    changed += conn.execute(
                        "UPDATE outbox SET done_at = ? WHERE event_id = ? AND done_at IS NULL",
                        (done_at, event_id),
                    ).rowcount
                return changed

            return Op(apply, "outbox", held_value=len(ids), done=ids)

        result: int = await self._submit(make)
        return result

    async def record_attempts(self, event_ids: Iterable[str]) -> None:
        """Count one publish attempt for each event (for stats and back-off)."""
        ids = tuple(event_ids)

        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE event_id = ?", [(i,) for i in ids]
            )

        await self._submit(lambda: Op(apply, "outbox", held_value=None, tried=ids))

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed (or held)."""
        await self._submit(lambda: Op(lambda conn: None, "flush", held_value=None))

    async def run_retention(self, now: float | None = None) -> RetentionResult:
        """Apply retention now (the writer also runs it every retention_interval_s);
        StoreError while degraded."""
        writer = self._open_writer()
        future = writer.call(lambda: writer.run_on_connection(lambda c: self._retain(c, now)))
        result: RetentionResult = await asyncio.wrap_future(future)
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
        self._retain(conn, None)

    def _retain(self, conn: sqlite3.Connection, now: float | None) -> RetentionResult:
        # On the writer thread, between batches, in its own transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = run_retention(
                conn, self._policy(), now if now is not None else self.options.clock()
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if result.freed_pages:
            # The file shrinks when the WAL is copied back into it: do it now, not at the next
            # automatic checkpoint (which may be 1000 pages away).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._note_retention(result)
        return result

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

    def _reader(self) -> sqlite3.Connection:
        local = self._reader_local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.generation != self._reader_generation:
            conn = None  # the file was reopened and this connection closed: read the new one
        if conn is None:
            generation = self._reader_generation
            conn = connect_reader(self.path, self.options.busy_timeout_ms)
            with self._reader_lock:
                self._reader_conns.append(conn)
            local.conn, local.generation = conn, generation
        return conn

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._readers is None or self._closed:
            raise StoreError(self.path, "the store is not open")

        def run() -> T:
            with self._read_gate:
                self._read_gate.wait_for(lambda: not self._readers_closing)
                self._active_reads += 1
            try:
                return query(self._reader())
            except sqlite3.Error as exc:
                raise translate_error(exc, self.path, "read") from exc
            finally:
                with self._read_gate:
                    self._active_reads -= 1
                    self._read_gate.notify_all()

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def pending_outbox(self, limit: int = 100) -> list[OutboxItem]:
        """Events not yet published, oldest first (so in creation order per device): the file's,
        then those held in memory (degraded mode), with the marks and attempts held applied."""
        writer = self._open_writer()
        # The held state first, then the file: an op written in between shows twice (and is
        # dropped by id), never not at all.
        held, done, tried = writer.held_outbox()
        try:
            rows = await self._read(lambda c: queries.select_pending(c, limit + len(done)))
        except StoreError as exc:
            if writer.problem() is None:
                raise
            log.warning("store_outbox_read_failed", path=str(self.path), error=str(exc))
            rows = []
        out: list[OutboxItem] = []
        seen: set[str] = set()
        for item in rows:
            event_id = item.event.id
            seen.add(event_id)
            if event_id not in done:
                out.append(replace(item, attempts=item.attempts + tried[event_id]))
        out.extend(
            OutboxItem(outbox_id=None, attempts=tried[e.id], event=e)
            for e in held
            if e.id not in done and e.id not in seen
        )
        return out[:limit]

    async def events(self, query: EventQuery | None = None) -> list[LoggedEvent]:
        """Events as `gatewayd events` reads them (the same query): the newest ``query.limit``
        matching, oldest first, with their delivery state. Held events show once written."""
        q = query if query is not None else EventQuery()
        return await self._read(lambda c: queries.select_events(c, q))

    async def open_events(self) -> list[StoredEvent]:
        """Per (device, alert kind), the latest event if its state is "raised": the alerts open
        when the gateway last stopped, for the rule engine to restore. Oldest first."""
        return await self._read(queries.open_events)

    async def unannounced_removals(self, paired: Collection[str]) -> list[str]:
        """Devices with windows in the log, not in ``paired`` and never said removed since
        (`queries.unannounced_removals`): taken off the list while the gateway was stopped."""
        found = await self._read(queries.unannounced_removals)
        return [d for d in found if d not in paired]

    async def cursors(self) -> dict[str, DeviceCursor]:
        """Every device's resume cursor (as last written with `record_window`)."""
        return await self._read(queries.select_cursors)

    async def windows(
        self, device: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[StoredWindow]:
        """Windows, filtered, oldest first."""
        return await self._read(lambda c: queries.select_windows(c, device, since, limit))

    async def stats(self) -> StoreStats:
        """Counts, sizes and writer counters."""
        writer = self._open_writer()
        assert self._opened is not None
        counters = writer.counters
        opened = self._opened
        problem = writer.problem()

        def size(suffix: str) -> int:
            try:
                return Path(f"{self.path}{suffix}").stat().st_size
            except FileNotFoundError:
                return 0

        def query(db: sqlite3.Connection) -> StoreStats:
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
                invalid_values=self._invalid_values,
                held=problem.held if problem is not None else 0,
                dropped_windows=counters.dropped_windows,
                reopened=counters.reopened,
            )

        return await self._read(query)
