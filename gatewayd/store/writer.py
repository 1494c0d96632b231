"""The single writer: one thread owns the write connection, commits in batches, and outlives
the disk.

Why a thread: sqlite3 calls block (disk I/O, fsync at checkpoints, the busy handler), and the
event loop must never block. Why one: SQLite allows one writer at a time anyway; funnelling all
writes through one connection removes lock contention between our own writers and lets many
small writes share one transaction ("group commit").

Each submitted `Op` is a function of the connection. The writer takes the first waiting op, then
up to ``max_batch - 1`` more already queued (or arriving within ``max_wait_s``), runs each inside
a SAVEPOINT in one transaction, COMMITs, and only then resolves the futures. An op that fails on
its own (a constraint) is rolled back to its savepoint and fails alone with `RecordRejectedError`.

**Degraded mode.** When a batch fails because of the disk or the database (full, locked past
busy_timeout, I/O error, read-only, vanished, corrupt), the writer does not fail the callers: it
*holds* the ops, in order, in memory (the spill), resolves each caller with the value it would
have had (the event id, the window id), and retries with backoff. While anything is held, new ops
join the end of the spill, so the order of writes is kept. Windows beyond ``max_held_windows``
are dropped and counted (events never are). On entering, it holds a gateway event
"event_log_degraded" raised (the publisher reads held events, so it is delivered while the disk
is full); when the spill is written it writes "event_log_degraded" cleared with how long it lasted
and how many windows were lost.

**A deleted or replaced file.** Every ``check_interval_s`` the writer compares the file at the
path with the one it has open (st_dev/st_ino). If it is gone or another, it reads the devices,
the pending events and the open alerts from the old (still open) connection, closes it, moves
whatever is at the path aside (never deletes), opens a fresh file, and writes what it read plus a
critical gateway event "event_log_replaced".

**A file found corrupt while running** (a write fails with SQLITE_CORRUPT or NOTADB, and
``PRAGMA quick_check`` agrees) goes the same way: what can still be read of it is carried over,
it is moved aside as ``<name>.corrupt-<UTC time>``, and what was held while degraded is written
to the fresh file -- at once, then at most every `CORRUPT_MOVE_INTERVAL_S`.

If the thread itself ever dies, every pending and future operation fails with the reason --
nothing waits forever.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from gatewayd.backoff import capped_backoff
from gatewayd.store.errors import (
    RecordRejectedError,
    StoreError,
    describe_problem,
    is_degrading,
    translate_error,
)
from gatewayd.store.open import (
    FileId,
    OpenedFile,
    clear_old_side_files,
    file_id,
    first_problem,
    move_aside,
)
from gatewayd.store.queries import CarryOver, read_carry_over, write_carry_over
from gatewayd.store.records import (
    NewEvent,
    ProblemCause,
    StoredEvent,
    StoreProblem,
    gateway_event,
)

__all__ = ["CANNOT_HOLD", "Op", "Writer", "WriterLimits"]

log = structlog.get_logger("gatewayd.store")

#: Errors that belong to one operation; the rest of the batch can still commit.
_ITEM_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)
#: The kind of the store's own degraded/recovered and replaced-file events.
DEGRADED_KIND: Final = "event_log_degraded"
REPLACED_KIND: Final = "event_log_replaced"
#: A file found corrupt while running is checked (and, if quick_check agrees, moved aside) at
#: once, then at most this often: a disk that corrupts every fresh file must not fill the
#: directory with them, nor a large file be read whole at every retry. A start always checks.
CORRUPT_MOVE_INTERVAL_S: Final = 600.0

Apply = Callable[[sqlite3.Connection], Any]
OpKind = Literal["window", "event", "outbox", "flush", "internal"]


class _CannotHold:
    """The marker of an op that fails instead of being held (retention on demand)."""


CANNOT_HOLD: Final = _CannotHold()


@dataclass(slots=True)
class Op:
    """One unit of work for the writer, the future its caller awaits, and what it is."""

    apply: Apply
    kind: OpKind = "internal"
    #: The caller's value if the op is held in memory instead of committed.
    held_value: Any = CANNOT_HOLD
    device_id: str | None = None
    #: Windows: writes the device's resume cursor alone, kept if the window is dropped.
    cursor_only: Apply | None = None
    #: Events: the event as pending_outbox shows it while held.
    event: StoredEvent | None = None
    #: Outbox updates: events marked published / tried once more.
    done: tuple[str, ...] = ()
    tried: tuple[str, ...] = ()
    #: The op that ends a degraded episode (its "cleared" event).
    recovery: bool = False
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


@dataclass(slots=True)
class _Call:
    """Run ``fn`` on the writer thread, outside any transaction (file check, retention)."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


@dataclass(slots=True)
class _Stop:
    future: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


@dataclass(slots=True)
class WriterCounters:
    """Plain counters, written by the writer thread only."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    failed_items: int = 0
    dropped_windows: int = 0
    reopened: int = 0


@dataclass(frozen=True, slots=True)
class WriterLimits:
    """Degraded mode's bounds and timings (from StoreOptions)."""

    max_batch: int = 256
    max_wait_s: float = 0.0
    max_held_windows: int = 20_000
    retry_base_s: float = 0.25
    retry_cap_s: float = 5.0
    #: busy_timeout while degraded, so a retry against a held lock does not stall the writer.
    degraded_busy_timeout_ms: int = 50
    busy_timeout_ms: int = 5000
    check_interval_s: float = 1.0
    close_timeout_s: float = 10.0
    maintenance_interval_s: float = 600.0


@dataclass(slots=True)
class _Problem:
    cause: ProblemCause
    since: float
    since_mono: float
    message: str


class Writer:
    """The writer thread. ``connect`` runs on the thread; its result resolves ``ready``."""

    def __init__(
        self,
        path: Path,
        connect: Callable[[], OpenedFile],
        *,
        limits: WriterLimits,
        event_op: Callable[[NewEvent], Op],
        clock: Callable[[], float],
        maintenance: Callable[[sqlite3.Connection], None] | None = None,
        on_change: Callable[[], None] = lambda: None,
        close_readers: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = path
        self.counters = WriterCounters()
        self.ready: concurrent.futures.Future[OpenedFile] = concurrent.futures.Future()
        self._connect = connect
        self._limits = limits
        self._event_op = event_op
        self._clock = clock
        self._maintenance = maintenance
        self._on_change = on_change
        self._close_readers = close_readers
        # Unbounded here; the bound is enforced on the asyncio side (Store), where a full
        # queue can be awaited instead of blocking the loop.
        self._queue: queue.SimpleQueue[Op | _Call | _Stop] = queue.SimpleQueue()
        self._dead: StoreError | None = None
        self._stopping = False
        self._conn: sqlite3.Connection | None = None
        self._identity: FileId | None = None
        # Degraded mode: the spill and what it is about; _lock guards them for other threads.
        self._lock = threading.Lock()
        self._spill: collections.deque[Op] = collections.deque()
        self._held_windows = 0
        self._dropped_windows = 0
        self._dropped_cursors: dict[str | None, Apply] = {}
        self._problem: _Problem | None = None
        self._recovery_written = False
        self._attempt = 0
        self._next_retry = 0.0
        #: When a write last found the file corrupt and quick_check was run (monotonic).
        self._corrupt_checked_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="gatewayd-store-writer", daemon=True)

    # --- the caller's side (any thread) ---------------------------------------------------------

    def start(self) -> concurrent.futures.Future[OpenedFile]:
        """Start the thread; the returned future resolves once the file is open."""
        self._thread.start()
        return self.ready

    def submit(self, op: Op) -> concurrent.futures.Future[Any]:
        """Queue one operation; raise StoreError if the writer is stopped or dead."""
        self._put(op)
        return op.future

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the writer thread between transactions."""
        call = _Call(fn)
        self._put(call)
        return call.future

    def _put(self, item: Op | _Call) -> None:
        if self._dead is not None:
            raise self._dead
        if self._stopping:
            raise StoreError(self.path, "the store is closing; no more writes are accepted")
        self._queue.put(item)
        self._fail_if_dead()  # it may have died between the check above and the put

    def _fail_if_dead(self) -> None:
        if self._dead is not None:
            self._fail_queued(self._dead)

    def stop(self) -> concurrent.futures.Future[None]:
        """Commit everything queued so far (held ops: try until close_timeout_s), then end."""
        self._stopping = True
        stop = _Stop()
        if not self._thread.is_alive():
            stop.future.set_result(None)
        else:
            self._queue.put(stop)
            self._fail_if_dead()  # a dead writer would never read it
        return stop.future

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (blocking; call from a worker thread)."""
        self._thread.join(timeout)

    def problem(self) -> StoreProblem | None:
        """What degraded mode is about now, or None."""
        with self._lock:
            p = self._problem
            if p is None:
                return None
            return StoreProblem(
                p.cause, p.since, p.message, len(self._spill), self._dropped_windows
            )

    def held_outbox(self) -> tuple[list[StoredEvent], set[str], collections.Counter[str]]:
        """Held events in order, held marks (published) and held attempt counts."""
        events: list[StoredEvent] = []
        done: set[str] = set()
        tried: collections.Counter[str] = collections.Counter()
        with self._lock:
            for op in self._spill:
                if op.event is not None:
                    events.append(op.event)
                done.update(op.done)
                tried.update(op.tried)
        return events, done, tried

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            opened = self._connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
            self._dead = translate_error(exc, self.path, "open")
            self.ready.set_exception(exc)
            return
        self._conn, self._identity = opened.conn, opened.identity
        self.ready.set_result(opened)
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller instead
            self._dead = StoreError(
                self.path, f"the writer thread stopped unexpectedly: {exc!r}; restart gatewayd"
            )
            log.critical("store_writer_died", path=str(self.path), error=repr(exc))
            self._fail_queued(self._dead)
        finally:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA optimize")
                self._conn.close()

    def _loop(self) -> None:
        limits = self._limits
        now = time.monotonic()
        next_maintenance = now  # once at start, then every interval
        next_check = now + limits.check_interval_s
        while True:
            now = time.monotonic()
            if self._problem is not None:
                if now >= self._next_retry:
                    self._retry()
            elif self._maintenance is not None and now >= next_maintenance:
                self._run_maintenance()
                next_maintenance = time.monotonic() + limits.maintenance_interval_s
            if limits.check_interval_s > 0 and now >= next_check:
                self.check_file()
                next_check = time.monotonic() + limits.check_interval_s
            deadlines = [next_check] if limits.check_interval_s > 0 else []
            if self._problem is not None:
                deadlines.append(self._next_retry)
            elif self._maintenance is not None:
                deadlines.append(next_maintenance)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            batch, other = self._collect(first)
            if batch:
                self._process(batch)
            if isinstance(other, _Call):
                self._run_call(other)
            elif isinstance(other, _Stop):
                self._finish(other)
                return

    def _collect(self, first: Op | _Call | _Stop) -> tuple[list[Op], _Call | _Stop | None]:
        if not isinstance(first, Op):
            return [], first
        batch = [first]
        deadline = time.monotonic() + self._limits.max_wait_s
        while len(batch) < self._limits.max_batch:
            try:
                if self._limits.max_wait_s:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, Op):
                return batch, item
            batch.append(item)
        return batch, None

    def _run_call(self, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            value = call.fn()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            call.future.set_exception(exc)
        else:
            call.future.set_result(value)

    def _transaction(self, ops: Sequence[Op]) -> list[tuple[Op, bool, Any]]:
        """Run ``ops`` in one transaction; raise if the transaction as a whole fails."""
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError(f"the event log {self.path} is not open")
        outcomes: list[tuple[Op, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.apply(conn)
                except _ITEM_ERRORS as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((op, False, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((op, True, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.counters.batches += 1
        self.counters.items += len(ops)
        self.counters.largest_batch = max(self.counters.largest_batch, len(ops))
        return outcomes

    def _process(self, batch: list[Op]) -> None:
        ops = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not ops:
            return
        if self._problem is not None:
            self._hold(ops)
            return
        try:
            outcomes = self._transaction(ops)
        except BaseException as exc:
            if isinstance(exc, Exception) and is_degrading(exc):
                self._degrade(exc)
                self._hold(ops)
                return
            error = translate_error(exc, self.path, "write")
            log.error(  # noqa: TRY400 - the message carries the advice
                "store_write_failed", path=str(self.path), items=len(ops), error=str(error)
            )
            self.counters.failed_items += len(ops)
            for op in ops:
                op.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise  # not a database problem: end the writer loudly (see _run)
            return
        # Only now, after COMMIT, do callers learn the outcome.
        for op, ok, value in outcomes:
            if ok:
                op.future.set_result(value)
            else:
                self.counters.failed_items += 1
                op.future.set_exception(self._rejected(op, value))

    def _rejected(self, op: Op, exc: BaseException) -> RecordRejectedError:
        return RecordRejectedError(
            self.path, op.device_id, None, None, f"the database refused it: {exc}"
        )

    # --- degraded mode -------------------------------------------------------------------------

    def _hold(self, ops: Sequence[Op], *, front: bool = False) -> None:
        """Keep ``ops`` in the spill (in order) and resolve their callers."""
        problem = self.problem()
        kept: list[Op] = []
        with self._lock:
            for op in ops:
                if op.kind == "flush":
                    continue
                if op.held_value is CANNOT_HOLD:
                    continue
                if op.kind == "window" and self._held_windows >= self._limits.max_held_windows:
                    self._dropped_windows += 1
                    self.counters.dropped_windows += 1
                    if op.cursor_only is not None:
                        self._dropped_cursors[op.device_id] = op.cursor_only
                    continue
                if op.kind == "window":
                    self._held_windows += 1
                kept.append(op)
            if front:
                self._spill.extendleft(reversed(kept))
            else:
                self._spill.extend(kept)
        for op in ops:
            if op.future.done():
                continue
            if op.held_value is CANNOT_HOLD:
                text = problem.text if problem is not None else "the event log is degraded"
                op.future.set_exception(StoreError(self.path, f"not done: {text}"))
            else:
                op.future.set_result(None if op.kind == "flush" else op.held_value)

    def _internal_event(self, event: NewEvent, *, recovery: bool = False) -> Op:
        op = self._event_op(event)
        op.recovery = recovery
        op.future.set_running_or_notify_cancel()
        return op

    def _degrade(self, exc: Exception) -> None:
        cause, message = describe_problem(exc, self.path)
        first = self._problem is None
        changed = first or (self._problem is not None and self._problem.message != message)
        if first:
            now = self._clock()
            with self._lock:
                self._problem = _Problem(cause, now, time.monotonic(), message)
            self._attempt = 0
            self._set_busy_timeout(self._limits.degraded_busy_timeout_ms)
            log.error("store_degraded", path=str(self.path), cause=cause, problem=message)
            raised = gateway_event(DEGRADED_KIND, "critical", message, now, cause=cause)
            self._hold([self._internal_event(raised)])
        elif changed:
            assert self._problem is not None
            with self._lock:
                self._problem.cause, self._problem.message = cause, message
            log.warning("store_degraded", path=str(self.path), cause=cause, problem=message)
        self._attempt += 1
        self._next_retry = time.monotonic() + capped_backoff(
            self._limits.retry_base_s, self._attempt, cap_s=self._limits.retry_cap_s
        )
        if changed:
            self._on_change()
        if cause == "corrupt":
            self._move_corrupt_aside()

    def _move_corrupt_aside(self) -> None:
        """Degraded because the file is corrupt: if SQLite's own check agrees, start afresh."""
        if self._conn is None:
            return  # not open: the retry opens whatever is at the path (a start's check)
        now = time.monotonic()
        last = self._corrupt_checked_at
        if last is not None and now - last < CORRUPT_MOVE_INTERVAL_S:
            return
        # The check reads the whole file (seconds on a large one on an SD card): not at every
        # retry either, when it found nothing.
        self._corrupt_checked_at = now
        try:
            problem = first_problem(self._conn)
        except sqlite3.Error:
            return  # busy, locked, I/O: no verdict on the file; keep retrying
        if problem is None:
            return  # SQLite finds nothing wrong: keep retrying, as for any other problem
        log.error("store_corrupt_while_running", path=str(self.path), check=problem)
        self._reopen("corrupt")
        self._next_retry = time.monotonic()  # write what was held into the fresh file now

    def _retry(self) -> None:
        if self._conn is None:
            try:
                self._open()
            except Exception as exc:  # noqa: BLE001 - still degraded; try again later
                self._degrade(exc)
                return
        with self._lock:
            chunk = [op for _, op in zip(range(self._limits.max_batch), self._spill, strict=False)]
        if not chunk:
            self._spill_written()
            return
        try:
            outcomes = self._transaction(chunk)
        except Exception as exc:
            if not is_degrading(exc):
                raise  # a bug in an op: end the writer loudly rather than loop on it
            self._degrade(exc)
            return
        for op, ok, value in outcomes:
            if not ok:
                self.counters.failed_items += 1
                log.error("store_held_write_rejected", path=str(self.path),
                          device=op.device_id, error=str(value))  # fmt: skip
        with self._lock:
            for op in chunk:
                self._spill.popleft()
                if op.kind == "window":
                    self._held_windows -= 1
            empty = not self._spill
        self._next_retry = time.monotonic()  # drain on at once
        if any(op.recovery for op in chunk):
            self._recovery_written = True
        if empty:
            self._spill_written()

    def _spill_written(self) -> None:
        if self._recovery_written:
            self._clear_problem()
        else:
            self._recover()

    def _recover(self) -> None:
        """Everything held is written: the dropped windows' cursors and the "cleared" event."""
        problem = self._problem
        assert problem is not None
        now = self._clock()
        with self._lock:
            cursors = list(self._dropped_cursors.values())
            self._dropped_cursors.clear()
            dropped = self._dropped_windows
        degraded_s = round(time.monotonic() - problem.since_mono, 3)
        message = (
            f"event log writes resumed after {degraded_s:.0f} s degraded ({problem.message});"
            f" {dropped} windows lost"
        )
        cleared = gateway_event(
            DEGRADED_KIND, "critical", message, now, state="cleared", cause=problem.cause,
            degraded_s=degraded_s, windows_lost=dropped,
        )  # fmt: skip
        ops = [Op(c, held_value=None) for c in cursors]
        for op in ops:
            op.future.set_running_or_notify_cancel()
        ops.append(self._internal_event(cleared, recovery=True))
        try:
            self._transaction(ops)
        except Exception as exc:
            if not is_degrading(exc):
                raise
            self._hold(ops)
            self._degrade(exc)
            return
        self._clear_problem()

    def _clear_problem(self) -> None:
        problem = self._problem
        assert problem is not None
        self._recovery_written = False
        with self._lock:
            self._problem = None
            dropped, self._dropped_windows = self._dropped_windows, 0
        self._set_busy_timeout(self._limits.busy_timeout_ms)
        log.warning("store_recovered_writes", path=str(self.path), cause=problem.cause,
                    degraded_s=round(time.monotonic() - problem.since_mono, 3),
                    windows_lost=dropped)  # fmt: skip
        self._on_change()

    def _set_busy_timeout(self, ms: int) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"PRAGMA busy_timeout = {int(ms)}")

    # --- the file at the path ------------------------------------------------------------------

    def _open(self) -> None:
        opened = self._connect()
        self._conn, self._identity = opened.conn, opened.identity
        if self._problem is not None:
            self._set_busy_timeout(self._limits.degraded_busy_timeout_ms)

    def check_file(self) -> bool:
        """On the writer thread: if the file was deleted or replaced, start a fresh one."""
        if self._conn is None:
            return False  # not open (degraded): the retry opens whatever is at the path
        current = file_id(self.path)
        if current == self._identity:
            return False
        self._reopen("deleted" if current is None else "replaced")
        return True

    def _reopen(self, how: Literal["deleted", "replaced", "corrupt"]) -> None:
        assert self._conn is not None
        carry: CarryOver | None = None
        try:
            carry = read_carry_over(self._conn)
        except sqlite3.Error as exc:
            log.error("store_carry_over_failed", path=str(self.path), error=str(exc))  # noqa: TRY400
        # Close every connection to the old file, ours last, before anything new exists at the
        # path: the last one to close checkpoints the old WAL into the old file and deletes it
        # by name -- which must still be the old file's WAL, not a fresh file's.
        self._close_readers()
        with contextlib.suppress(sqlite3.Error):
            # What the WAL holds goes into the old file (wherever it is now: the descriptor
            # is still open), so the WAL left at the path is empty.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn, self._identity = None, None
        self.counters.reopened += 1
        now = self._clock()
        moved: tuple[Path, ...] = ()
        try:
            # SQLite keeps the WAL of a moved file: it is the old file's, not the new one's.
            previous = clear_old_side_files(self.path, now)
            if previous:
                log.warning("store_old_wal_moved", path=str(self.path),
                            moved_to=[str(p) for p in previous])  # fmt: skip
            if how != "deleted":
                moved = move_aside(self.path, now, how)
        except (OSError, StoreError) as exc:
            log.error("store_move_aside_failed", path=str(self.path), error=str(exc))  # noqa: TRY400
        self._on_change()
        pending = len(carry.pending) if carry is not None else 0
        devices = len(carry.devices) if carry is not None else 0
        where = ""
        if moved:
            where = f": moved {'it' if how == 'corrupt' else 'the file found there'} to {moved[0]}"
        rest = "are only in the moved file" if how == "corrupt" and moved else "in it are lost"
        lost = (
            f"carried over {pending} unpublished events, the open alerts and {devices} devices;"
            f" the windows and published events {rest}"
            if carry is not None
            else "could not read the old file: its unpublished events are lost"
        )
        message = (
            f"event log {self.path} was {how} while gatewayd was running{where}; started a"
            f" fresh one and {lost}"
        )
        moved_to = [str(p) for p in moved]
        log.critical("store_file_replaced", path=str(self.path), how=how, moved_to=moved_to,
                     pending=pending, devices=devices)  # fmt: skip
        ops: list[Op] = []
        if carry is not None:
            kept = carry
            ops.append(Op(lambda conn: write_carry_over(conn, kept, now), held_value=None))
            ops[-1].future.set_running_or_notify_cancel()
        event = gateway_event(REPLACED_KIND, "critical", message, now, how=how, moved_to=moved_to,
                              pending_events=pending, devices=devices)  # fmt: skip
        ops.append(self._internal_event(event))
        self._start_fresh(ops)

    def _start_fresh(self, ops: list[Op]) -> None:
        """Open the file at the path and write ``ops`` first (held at the front if not now)."""
        try:
            self._open()
        except Exception as exc:
            if not is_degrading(exc):
                raise
            self._hold(ops, front=True)
            self._degrade(exc)
            return
        if self._problem is not None:
            # Held writes are waiting: the carry-over is older, so it goes before them.
            self._hold(ops, front=True)
            return
        try:
            self._transaction(ops)
        except Exception as exc:
            if not is_degrading(exc):
                raise
            self._hold(ops, front=True)
            self._degrade(exc)

    # --- the end -------------------------------------------------------------------------------

    def _finish(self, stop: _Stop) -> None:
        deadline = time.monotonic() + self._limits.close_timeout_s
        while self._problem is not None and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._next_retry, deadline) - time.monotonic()))
            if time.monotonic() < deadline:
                self._retry()
        with self._lock:
            held = list(self._spill)
        if held:
            events = sum(1 for op in held if op.event is not None)
            windows = sum(1 for op in held if op.kind == "window")
            problem = self.problem()
            log.critical("store_closed_with_held_writes", path=str(self.path),
                         events_lost=events, windows_lost=windows, held=len(held),
                         problem=problem.text if problem else None)  # fmt: skip
        stop.future.set_result(None)

    def _run_maintenance(self) -> None:
        assert self._maintenance is not None
        conn = self._conn
        if conn is None:
            return
        try:
            self._maintenance(conn)
        except Exception as exc:  # noqa: BLE001 - retention must not kill the writer
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            log.warning(
                "store_maintenance_failed",
                path=str(self.path),
                error=str(translate_error(exc, self.path, "run retention")),
            )

    def run_on_connection(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """On the writer thread: ``fn`` on the open connection (StoreError when there is none)."""
        if self._conn is None or self._problem is not None:
            problem = self.problem()
            text = problem.text if problem is not None else "the event log is not open"
            raise StoreError(self.path, f"not done: {text}")
        return fn(self._conn)

    def _fail_queued(self, error: StoreError) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Stop):
                item.future.set_result(None)
            elif item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)
