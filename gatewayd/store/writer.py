"""The single writer: one thread owns the write connection and commits in batches.

Why a thread: sqlite3 calls block (disk I/O, fsync at checkpoints, the busy handler), and the
event loop must never block. Why one: SQLite allows one writer at a time anyway; funnelling all
writes through one connection removes lock contention (SQLITE_BUSY) and lets many small writes
share one transaction ("group commit"), which is where the throughput comes from.

Each submitted operation is a function of the connection. The writer takes the first waiting
operation, then up to ``max_batch - 1`` more that are already queued (or arrive within
``max_wait_s``), runs each inside a SAVEPOINT in one transaction, COMMITs, and only then resolves
the futures: a resolved future means the data is committed. An operation that fails on its own
(a constraint, bad input) is rolled back to its savepoint and fails alone; an error that
threatens the transaction (disk full, I/O error) rolls back the batch and fails every
operation in it. The writer keeps going either way; if it ever dies, every pending and future
operation fails with the reason -- nothing waits forever.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from gatewayd.store.errors import StoreError, translate_error

__all__ = ["Op", "Writer"]

log = structlog.get_logger("gatewayd.store")

#: Errors that belong to one operation; the rest of the batch can still commit.
_ITEM_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    ValueError,
    TypeError,
)

Apply = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class Op:
    """One unit of work for the writer and the future its caller awaits."""

    apply: Apply
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


class Writer:
    """The writer thread. ``connect`` runs on the thread; its result resolves ``ready``."""

    def __init__(
        self,
        path: Path,
        connect: Callable[[], tuple[sqlite3.Connection, Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        maintenance: Callable[[sqlite3.Connection], None] | None = None,
        maintenance_interval_s: float = 600.0,
    ) -> None:
        self.path = path
        self.counters = WriterCounters()
        self.ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._connect = connect
        self._max_batch = max(1, max_batch)
        self._max_wait_s = max(0.0, max_wait_s)
        self._maintenance = maintenance
        self._maintenance_interval_s = maintenance_interval_s
        # Unbounded here; the bound is enforced on the asyncio side (Store), where a full
        # queue can be awaited instead of blocking the loop.
        self._queue: queue.SimpleQueue[Op | _Stop] = queue.SimpleQueue()
        self._dead: StoreError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gatewayd-store-writer", daemon=True)

    def start(self) -> concurrent.futures.Future[Any]:
        """Start the thread; the returned future resolves once the file is open."""
        self._thread.start()
        return self.ready

    def submit(self, apply: Apply) -> concurrent.futures.Future[Any]:
        """Queue one operation; raise StoreError if the writer is stopped or dead."""
        if self._dead is not None:
            raise self._dead
        if self._stopping:
            raise StoreError(self.path, "the store is closing; no more writes are accepted")
        op = Op(apply)
        self._queue.put(op)
        self._fail_if_dead()  # it may have died between the check above and the put
        return op.future

    def _fail_if_dead(self) -> None:
        if self._dead is not None:
            self._fail_queued(self._dead)

    def stop(self) -> concurrent.futures.Future[None]:
        """Commit everything queued so far, then close the connection and end the thread."""
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

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn, info = self._connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
            self._dead = translate_error(exc, self.path, "open")
            self.ready.set_exception(exc)
            return
        self.ready.set_result(info)
        try:
            self._loop(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller instead
            self._dead = StoreError(
                self.path, f"the writer thread stopped unexpectedly: {exc!r}; restart gatewayd"
            )
            log.critical("store_writer_died", path=str(self.path), error=repr(exc))
            self._fail_queued(self._dead)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")
            conn.close()

    def _loop(self, conn: sqlite3.Connection) -> None:
        next_maintenance = time.monotonic()  # once at start, then every interval
        while True:
            if self._maintenance is not None and time.monotonic() >= next_maintenance:
                self._run_maintenance(conn)
                next_maintenance = time.monotonic() + self._maintenance_interval_s
            timeout = (
                max(0.0, next_maintenance - time.monotonic())
                if self._maintenance is not None
                else None
            )
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            batch, stop = self._collect(first)
            if batch:
                self._commit(conn, batch)
            if stop is not None:
                stop.future.set_result(None)
                return

    def _collect(self, first: Op | _Stop) -> tuple[list[Op], _Stop | None]:
        if isinstance(first, _Stop):
            return [], first
        batch = [first]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            try:
                if self._max_wait_s:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop):
                return batch, item
            batch.append(item)
        return batch, None

    def _commit(self, conn: sqlite3.Connection, batch: list[Op]) -> None:
        ops = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not ops:
            return
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
        except BaseException as exc:  # the whole batch failed: every caller hears it
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = translate_error(exc, self.path, "write")
            # The translated message carries the advice; a traceback would only repeat it.
            log.error(  # noqa: TRY400
                "store_write_failed", path=str(self.path), items=len(ops), error=str(error)
            )
            self.counters.failed_items += len(ops)
            for op in ops:
                op.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise  # not a database problem: end the writer loudly (see _run)
            return
        self.counters.batches += 1
        self.counters.items += len(ops)
        self.counters.largest_batch = max(self.counters.largest_batch, len(ops))
        # Only now, after COMMIT, do callers learn the outcome.
        for op, ok, value in outcomes:
            if ok:
                op.future.set_result(value)
            else:
                self.counters.failed_items += 1
                op.future.set_exception(
                    StoreError(self.path, f"rejected: {value}")
                    if isinstance(value, sqlite3.Error)
                    else value
                )

    def _run_maintenance(self, conn: sqlite3.Connection) -> None:
        assert self._maintenance is not None
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
