"""A store no disk can take down, on real files: bad values, a full disk (page cap, a file size
limit in a child process, a full tmpfs), a lock held by another process, and the file deleted or
replaced under a running store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.store import (
    GATEWAY,
    DeviceCursor,
    EventQuery,
    NewEvent,
    RecordRejectedError,
    Store,
    StoreOptions,
    WindowRecord,
)
from tests import disk

pytestmark = pytest.mark.asyncio

#: Fast retries so that the tests wait on real state changes, not on backoff.
FAST = StoreOptions(retry_base_s=0.02, retry_cap_s=0.1, busy_timeout_ms=300, close_timeout_s=2.0)


def alert(device: str | None = "w1", **payload: object) -> NewEvent:
    return NewEvent("tachycardia", "warning", "raised", payload, device_id=device)


def rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def until_clear(store: Store) -> None:
    version = store.problem_version
    while store.problem is not None:
        version = await store.wait_problem_change(version)


# --- values SQLite cannot hold -------------------------------------------------------------------


async def test_an_unset_clock_is_stored_null_and_every_other_write_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    unset = 2**64 - 1  # an all-0xFF t_ms: beyond SQLite's signed 64-bit INTEGER
    async with Store.open(path) as store:
        # In one batch with other devices' writes: none of them may fail.
        results = await asyncio.gather(
            store.record_window(WindowRecord("w0", 1.0, seq=1, t_ms=5, hr_bpm=70.0)),
            store.record_window(WindowRecord("bad", 2.0, seq=2, t_ms=unset, hr_bpm=float("nan"))),
            store.append_event(alert("w2", hr=float("inf"))),
            store.record_window(WindowRecord("w3", 3.0, seq=3, t_ms=7, battery=2**70)),
        )
        assert all(not isinstance(r, BaseException) for r in results)
        windows = {w.device_id: w for w in await store.windows()}
        assert set(windows) == {"w0", "bad", "w3"}
        bad = windows["bad"]
        assert (bad.seq, bad.t_ms, bad.hr_bpm) == (2, None, None)
        assert bad.invalid is not None
        assert str(unset) in bad.invalid["t_ms"]
        assert "64-bit" in bad.invalid["t_ms"]
        assert "finite" in bad.invalid["hr_bpm"]
        assert windows["w0"].t_ms == 5
        assert windows["w0"].invalid is None
        assert (windows["w3"].t_ms, windows["w3"].battery) == (7, None)
        (event,) = await store.events()
        assert event.event.payload == {"hr": None}
        assert (await store.stats()).invalid_values == 4
        with pytest.raises(RecordRejectedError, match="device_id"):
            await store.record_window(WindowRecord("", 4.0))
        with pytest.raises(RecordRejectedError, match="kind"):
            await store.record_window(WindowRecord("w0", 4.0, kind="other"))  # type: ignore[arg-type]
        assert store.problem is None
        assert isinstance(await store.record_window(WindowRecord("w0", 5.0)), int)


# --- cursors, open events ------------------------------------------------------------------------


async def test_cursors_are_written_with_the_window_and_open_events_are_the_raised_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path) as store:
        await store.record_window(WindowRecord("w1", 1.0, seq=9), cursor=DeviceCursor(7, 10))
        await store.record_window(WindowRecord("w1", 2.0, seq=10))  # no cursor: kept
        await store.record_window(WindowRecord("w2", 2.0, seq=3), cursor=DeviceCursor(1, 4))
        await store.record_window(WindowRecord("w2", 3.0, seq=4), cursor=DeviceCursor(2, 0))

        def episode(kind: str, state: str, device: str) -> NewEvent:
            return NewEvent(kind, "warning", state, {"episode": 1}, device_id=device)

        await store.append_event(episode("tachycardia", "raised", "w1"))
        fall = await store.append_event(episode("fall", "raised", "w1"))
        await store.append_event(episode("tachycardia", "cleared", "w1"))
        silent = await store.append_event(episode("device_silent", "raised", "w2"))
        await store.append_event(alert("w2"))  # no episode: a one-off, never open
    async with Store.open(path) as store:
        # A loss moves the cursor with its event, in the same transaction.
        await store.append_event(
            NewEvent("data_lost", "warning", "raised", {}, device_id="w3", created_at=5.0),
            cursor=DeviceCursor(4, 40),
        )
        assert (await store.cursors())["w3"] == DeviceCursor(4, 40, heard_at=5.0)
    async with Store.open(path) as store:
        assert await store.cursors() == {
            "w1": DeviceCursor(7, 10, heard_at=2.0),
            "w2": DeviceCursor(2, 0, heard_at=3.0),
            "w3": DeviceCursor(4, 40, heard_at=5.0),
        }
        assert [e.id for e in await store.open_events()] == [fall, silent]


# --- a full disk ---------------------------------------------------------------------------------


async def test_a_full_page_cap_holds_writes_in_memory_and_the_outbox_still_delivers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    options = StoreOptions(
        max_page_count=40, max_held_windows=5, retry_base_s=0.05, close_timeout_s=0.3
    )
    async with Store.open(path, options=options) as store:
        written: list[str] = []
        while store.problem is None:
            written.append(await store.append_event(alert(pad="x" * 1000)))
        problem = store.problem
        assert problem is not None
        assert problem.cause == "disk_full"
        assert "page limit" in problem.message or "disk full" in problem.message
        held = [await store.append_event(alert(n=n)) for n in range(3)]
        for n in range(20):
            await store.record_window(WindowRecord("w1", float(n)))
        problem = store.problem
        assert problem is not None
        assert problem.dropped_windows == 15
        assert "operations held in memory" in problem.text
        pending = await store.pending_outbox(limit=10_000)
        ids = [p.event_id for p in pending]
        # The file's events, then the held ones: the batch that hit the cap, the store's own
        # "event_log_degraded" alert, then the three appended since -- in order.
        assert ids[: len(written) - 1] == written[:-1]
        assert ids[-3:] == held
        degraded = [p for p in pending if p.event.kind == "event_log_degraded"]
        assert len(degraded) == 1
        assert degraded[0].device_id is None
        assert degraded[0].outbox_id is None  # held, not yet in the file
        # The publisher marks held events published: they leave the outbox at once.
        await store.mark_published(held[:2])
        await store.record_attempts([held[2]])
        after = await store.pending_outbox(limit=10_000)
        assert [p.event_id for p in after][-1] == held[2]
        assert after[-1].attempts == 1
        assert held[0] not in {p.event_id for p in after}


CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sys
    from gatewayd.store import EventQuery, NewEvent, Store, StoreOptions, WindowRecord

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death at the limit
    path = sys.argv[1]

    async def main():
        options = StoreOptions(retry_base_s=0.02, retry_cap_s=0.1, max_held_windows=40)
        async with Store.open(path, options=options) as store:
            await store.record_window(WindowRecord("w1", 0.0))
            sizes = [os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s)]
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 32768, hard))
            acked, windows = [], 1
            while store.problem is None:
                acked.append(await store.append_event(
                    NewEvent("fall", "critical", "raised", {"pad": "x" * 2000}, "w1")))
                await store.record_window(WindowRecord("w1", 1.0))
                windows += 1
            cause, message = store.problem.cause, store.problem.message
            for n in range(100):
                await store.record_window(WindowRecord("w1", 2.0 + n))
                windows += 1
            for n in range(10):
                acked.append(await store.append_event(
                    NewEvent("fall", "critical", "raised", {"n": n}, "w2")))
            held = store.problem.held
            dropped = store.problem.dropped_windows
            version = store.problem_version
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
            while store.problem is not None:
                version = await store.wait_problem_change(version)
            events = await store.events(EventQuery())
            stored = len(await store.windows())
        print(json.dumps({
            "cause": cause, "message": message, "acked": acked, "windows": windows,
            "held": held, "dropped": dropped, "stored_windows": stored,
            "events": [[e.event.id, e.event.kind, e.event.state, e.event.payload] for e in events],
        }))

    asyncio.run(main())
    """
)


async def test_a_file_size_limit_degrades_then_everything_held_is_written(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["cause"] == "disk_full", report["message"]
    assert "file size limit" in report["message"]
    assert report["held"] > 10
    events = report["events"]
    stored = [e[0] for e in events]
    # Every acknowledged event is in the file, in order, none twice.
    assert [i for i in stored if i in set(report["acked"])] == report["acked"]
    assert len(set(stored)) == len(stored)
    degraded = [e for e in events if e[1] == "event_log_degraded"]
    assert [e[2] for e in degraded] == ["raised", "cleared"]
    cleared = degraded[1][3]["evidence"]
    assert cleared["windows_lost"] == report["dropped"] > 0
    assert cleared["degraded_s"] >= 0
    # Windows: every one is stored or counted as lost.
    assert report["stored_windows"] + report["dropped"] == report["windows"]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with disk.small_tmpfs(tmp_path / "mnt", "1m") as mount:
        yield mount


async def test_a_full_tmpfs_degrades_and_writes_resume_once_space_is_freed(
    small_tmpfs: Path,
) -> None:
    path = small_tmpfs / "g.db"
    filler = small_tmpfs / "filler"
    async with Store.open(path, options=FAST) as store:
        first = await store.append_event(alert())
        await asyncio.to_thread(disk.take_every_free_block, filler)
        acked = [first]
        while store.problem is None:
            acked.append(await store.append_event(alert(pad="y" * 2000)))
        problem = store.problem
        assert problem.cause == "disk_full"
        assert f"disk full on {small_tmpfs}" in problem.message
        assert "free space" in problem.message
        acked += [await store.append_event(alert(n=n)) for n in range(5)]
        filler.unlink()  # the operator frees space
        await until_clear(store)
        stored = [e.event.id for e in await store.events()]
    assert [i for i in stored if i in set(acked)] == acked
    kinds = rows(path, "SELECT state FROM events WHERE kind = 'event_log_degraded' ORDER BY rowid")
    assert kinds == [("raised",), ("cleared",)]


# --- a lock held by another process --------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    print("released", flush=True)
    """
)


async def test_a_lock_held_by_another_process_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path, options=FAST) as store:
        acked = [await store.append_event(alert(n=-1))]
        await store.record_window(WindowRecord("w1", 0.0))
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, str(path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        try:
            windows = 1
            for n in range(30):
                acked.append(await store.append_event(alert("w2" if n % 2 else "w1", n=n)))
                await store.record_window(WindowRecord("w1", float(n)))
                windows += 1
            problem = store.problem
            assert problem is not None
            assert problem.cause == "locked"
            assert "another process" in problem.message
            # Reads go on under the lock (WAL), with the held events in the outbox.
            pending = [p.event_id for p in await store.pending_outbox(limit=1000)]
            assert set(acked) <= set(pending)
        finally:
            holder.stdin.write(b"go\n")
            await holder.stdin.drain()
            assert await holder.stdout.readline() == b"released\n"
            await holder.wait()
        await until_clear(store)
        stored = [e.event.id for e in await store.events(EventQuery(device="w1"))] + [
            e.event.id for e in await store.events(EventQuery(device="w2"))
        ]
        assert sorted(stored) == sorted(acked)
        assert len(await store.windows()) == windows
        gateway = await store.events(EventQuery(device=GATEWAY))
        assert [(e.event.kind, e.event.state) for e in gateway] == [
            ("event_log_degraded", "raised"),
            ("event_log_degraded", "cleared"),
        ]
        assert gateway[1].event.payload["evidence"]["windows_lost"] == 0
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


# --- the file deleted or replaced while running --------------------------------------------------


async def seed(store: Store) -> tuple[str, str, str]:
    """A published event, a pending one, an open alert already published; a device cursor."""
    await store.record_window(WindowRecord("w1", 1.0, seq=4), cursor=DeviceCursor(3, 5))
    published = await store.append_event(alert(n=1))
    pending = await store.append_event(alert(n=2))
    opened = await store.append_event(NewEvent("fall", "critical", "raised", {"episode": 1}, "w1"))
    await store.mark_published([published, opened])
    return published, pending, opened


async def test_a_deleted_file_is_noticed_and_a_fresh_one_keeps_what_matters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    options = StoreOptions(file_check_interval_s=0.05)
    async with Store.open(path, options=options) as store:
        published, pending, opened = await seed(store)
        version = store.problem_version
        path.unlink()  # rm gatewayd.db under the running daemon
        await store.wait_problem_change(version)  # the writer noticed (and started afresh)
        after = await store.append_event(alert(n=3))
        await store.record_window(WindowRecord("w1", 2.0, seq=5), cursor=DeviceCursor(3, 6))
        await store.flush()
        assert store.problem is None
        pending_ids = [p.event_id for p in await store.pending_outbox()]
        assert (await store.stats()).reopened == 1
    assert path.exists()
    events = rows(path, "SELECT id, kind, severity, state FROM events ORDER BY rowid")
    ids = [e[0] for e in events]
    assert published not in ids  # published and closed: not carried
    assert ids[:2] == [opened, pending]  # the open alert stays open, the pending one pending
    replaced = [e for e in events if e[1] == "event_log_replaced"]
    assert len(replaced) == 1
    assert replaced[0][2:] == ("critical", "raised")
    assert ids[-1] == after
    assert pending_ids == [pending, replaced[0][0], after]
    (payload,) = rows(path, "SELECT payload FROM events WHERE kind = 'event_log_replaced'")[0]
    assert "was deleted while gatewayd was running" in json.loads(str(payload))["reason"]
    assert rows(path, "SELECT device_id, boot_id, next_seq FROM devices") == [("w1", 3, 6)]
    assert rows(path, "SELECT count(*) FROM windows") == [(1,)]  # the one written after
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


async def test_a_replaced_file_is_moved_aside_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    other = tmp_path / "other.db"
    rows(other, "CREATE TABLE mine (x)")
    rows(other, "INSERT INTO mine VALUES (42)")
    options = StoreOptions(file_check_interval_s=0)  # only when asked
    async with Store.open(path, options=options) as store:
        _, pending, opened = await seed(store)
        assert not await store.check_file()
        other.replace(path)  # mv other.db gatewayd.db
        assert await store.check_file()
        after = await store.append_event(alert(n=3))
        events = await store.events()
        assert [e.event.id for e in events][:2] == [opened, pending]
        assert events[-1].event.id == after
        message = events[-2].event.payload["reason"]
        assert "was replaced while gatewayd was running: moved the file found there to" in message
    (moved,) = await asyncio.to_thread(lambda: list(tmp_path.glob("g.db.replaced-*")))
    assert moved.name in message
    assert rows(moved, "SELECT x FROM mine") == [(42,)]  # the other file, untouched
    assert rows(path, "SELECT count(*) FROM outbox WHERE done_at IS NULL") == [(3,)]


async def test_a_file_found_corrupt_while_running_is_moved_aside_and_nothing_pending_is_lost(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path, options=FAST) as store:
        published, pending, opened = await seed(store)
        for n in range(50):
            await store.record_window(WindowRecord("w1", 10.0 + n, seq=10 + n))
        await store.flush()
        await asyncio.to_thread(disk.scribble_over_windows, path)
        # The next window reads the garbage: the store degrades, moves the file aside, starts a
        # fresh one with what mattered in the old one, then writes what it held.
        held = await store.append_event(alert(n=3))
        await store.record_window(WindowRecord("w1", 100.0, seq=100), cursor=DeviceCursor(3, 101))
        after = await store.append_event(alert(n=4))
        await asyncio.wait_for(until_clear(store), 10)  # not left degraded until a restart
        await store.flush()
        assert (await store.stats()).reopened == 1
        pending_ids = [p.event_id for p in await store.pending_outbox()]
    (moved,) = await asyncio.to_thread(lambda: list(tmp_path.glob("g.db.corrupt-*")))
    events = rows(path, "SELECT id, kind, state, payload FROM events ORDER BY rowid")
    ids = [e[0] for e in events]
    assert published not in ids  # published and closed: not carried
    assert ids[:2] == [opened, pending]  # carried over from the corrupt file
    assert held in ids
    assert after in ids
    kinds = [(e[1], e[2]) for e in events if e[1].startswith("event_log")]
    assert ("event_log_replaced", "raised") in kinds
    assert ("event_log_degraded", "raised") in kinds
    assert ("event_log_degraded", "cleared") in kinds
    (reason,) = [json.loads(str(e[3]))["reason"] for e in events if e[1] == "event_log_replaced"]
    assert "was corrupt while gatewayd was running" in reason
    assert moved.name in reason
    assert set(pending_ids) >= {pending, held, after}
    assert rows(path, "SELECT seq FROM windows") == [(100,)]
    assert rows(path, "SELECT device_id, boot_id, next_seq FROM devices") == [("w1", 3, 101)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


async def test_a_second_corruption_soon_after_stays_degraded_instead_of_moving_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path, options=FAST) as store:
        await seed(store)
        await store.flush()
        for n in range(2):
            await asyncio.to_thread(disk.scribble_over_windows, path)
            version = store.problem_version
            await store.record_window(WindowRecord("w1", 10.0 + n, seq=10 + n))
            await asyncio.wait_for(store.wait_problem_change(version), 10)
            if n == 0:
                await asyncio.wait_for(until_clear(store), 10)
        # The fresh file went bad as well, within CORRUPT_MOVE_INTERVAL_S: no second move.
        problem = store.problem
        assert problem is not None
        assert problem.cause == "corrupt"
        assert "moves it aside" in problem.message
    moved = await asyncio.to_thread(lambda: list(tmp_path.glob("g.db.corrupt-*")))
    assert len([p for p in moved if not p.name.endswith(("-wal", "-shm"))]) == 1
