"""What the event log promises when things go wrong: migrations, corruption, a full disk,
a SIGKILL mid-stream, and retention that never drops an undelivered event."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gatewayd.config import StoreConfig
from gatewayd.store import SCHEMA_VERSION, NewEvent, Store, StoreError, StoreOptions, WindowRecord
from gatewayd.store.schema import migrate

pytestmark = pytest.mark.asyncio


def alert(device: str = "w1", **payload: object) -> NewEvent:
    return NewEvent("tachycardia", "warning", "firing", payload=payload, device_id=device)


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# --- schema versions ----------------------------------------------------------------------------


def write_version_1_file(path: Path) -> None:
    """A file as the first release wrote it: schema version 1, no windows table."""
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, target=1)
    conn.execute("INSERT INTO devices VALUES ('w1', NULL, NULL, NULL, 1, 1, NULL)")
    conn.execute(
        "INSERT INTO events VALUES ('01a21241-c876-73da-b39b-6b221b46555e', 'w1', 'fall',"
        " 'critical', 'firing', 1, NULL, '{}')"
    )
    conn.execute(
        "INSERT INTO outbox (event_id, device_id, topic, created_at)"
        " VALUES ('01a21241-c876-73da-b39b-6b221b46555e', 'w1', 't', 1)"
    )
    conn.close()


async def test_an_older_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    await asyncio.to_thread(write_version_1_file, path)
    async with Store.open(path) as store:
        assert store.migrated_from == 1
        (item,) = await store.pending_outbox()
        assert item.event.kind == "fall"
        await store.record_window(WindowRecord("w1", 2.0, hr_bpm=60.0))
        assert len(await store.windows()) == 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


async def test_a_newer_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path) as store:
        await store.append_event(alert())
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer gatewayd") as info:
        async with Store.open(path):
            pass
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert "upgrade gatewayd" in str(info.value)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.corrupt-*"))  # noqa: ASYNC240


# --- corruption ---------------------------------------------------------------------------------


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 100)
    Path(f"{path}-wal").write_bytes(b"junk")
    Path(f"{path}-shm").write_bytes(b"junk")


async def test_a_file_that_is_not_sqlite_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    await asyncio.to_thread(write_garbage, path)
    async with Store.open(path, options=StoreOptions(clock=lambda: 1_764_000_000.0)) as store:
        recovery = store.recovery
        assert recovery is not None
        moved = [p.name for p in recovery.moved_to]
        assert moved == [
            "g.db.corrupt-20251124T160000Z",
            "g.db.corrupt-20251124T160000Z-wal",
            "g.db.corrupt-20251124T160000Z-shm",
        ]
        assert recovery.message.startswith(f"event log {path} was corrupt (")
        assert f"moved it to {recovery.moved_to[0]} (with its -wal/-shm)" in recovery.message
        assert "not an SQLite database" in recovery.message
        assert (await store.stats()).recovery == recovery
        await store.append_event(alert())  # the fresh store works
    assert (tmp_path / "g.db.corrupt-20251124T160000Z").read_bytes().startswith(b"this is not")
    assert integrity(path) == "ok"


async def test_a_corrupt_sqlite_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path) as store:
        for n in range(300):
            await store.append_event(alert(n=n, pad="x" * 200))
    size = path.stat().st_size
    assert size > 8 * 4096
    with path.open("r+b") as f:  # scribble over a few pages in the middle of the file
        f.seek(4 * 4096)
        f.write(os.urandom(3 * 4096))
    async with Store.open(path) as store:
        recovery = store.recovery
        assert recovery is not None
        assert "quick_check" in recovery.reason
        assert await store.events() == []
    assert len(recovery.moved_to) >= 1
    assert recovery.moved_to[0].stat().st_size == size


async def test_a_healthy_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path) as store:
        await store.append_event(alert())
    async with Store.open(path, options=StoreOptions(integrity_check="full")) as store:
        assert store.recovery is None
        assert len(await store.events()) == 1


# --- a full disk, a read-only file --------------------------------------------------------------


async def test_a_full_disk_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    # max_page_count makes SQLite answer SQLITE_FULL as a full file system would; the store
    # holds what it cannot write (tests/test_store_degraded.py) and, at close, gives up on it.
    options = StoreOptions(max_page_count=40, close_timeout_s=0.2)
    acked: list[str] = []
    async with Store.open(path, options=options) as store:
        while store.problem is None:
            acked.append(await store.append_event(alert(pad="x" * 1000)))
        assert store.problem.cause == "disk_full"
        assert (await store.stats()).held >= 1
    assert integrity(path) == "ok"
    async with Store.open(path) as store:  # no cap: everything committed is there
        stored = [e.event.id for e in await store.events()]
        assert stored == acked[: len(stored)]
        assert len(stored) >= len(acked) - 1  # at most the batch that hit the cap is lost


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_a_read_only_directory_is_reported_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "g.db"
    async with Store.open(path) as store:
        await store.append_event(alert())
    path.parent.chmod(0o500)
    path.chmod(0o400)
    try:
        with pytest.raises(StoreError, match=r"read-only|permission|cannot open"):
            async with Store.open(path) as store:
                await store.append_event(alert())
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)


async def test_an_unwritable_directory_path_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(StoreError, match="create the directory"):
        async with Store.open(blocker / "g.db"):
            pass


async def test_a_directory_in_place_of_the_file_is_reported_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    await asyncio.to_thread(path.mkdir)
    with pytest.raises(StoreError, match=r"g\.db: cannot"):
        async with Store.open(path):
            pass
    assert await asyncio.to_thread(path.is_dir)


# --- crash safety -------------------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gatewayd.store import NewEvent, Store

    async def writer(store, device):
        n = 0
        while True:
            event = NewEvent("tachycardia", "warning", "firing", {"n": n}, device_id=device)
            event_id = await store.append_event(event)
            print(event_id, flush=True)
            n += 1

    async def main():
        async with Store.open(sys.argv[1]) as store:
            await asyncio.gather(*(writer(store, f"w{i}") for i in range(4)))

    asyncio.run(main())
    """
)


async def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    child = subprocess.Popen(  # noqa: ASYNC220 - the test drives the child synchronously
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 20
    while len(acknowledged) < 2000 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        if _UUID.fullmatch(line.strip()):  # (structlog's lines go to stdout too)
            acknowledged.append(line.strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    acknowledged.extend(line.strip() for line in child.stdout if _UUID.fullmatch(line.strip()))
    child.stdout.close()
    assert len(acknowledged) >= 500, "the child wrote too little before the kill"

    assert integrity(path) == "ok"
    async with Store.open(path) as store:
        assert store.recovery is None
        stored = {e.event.id for e in await store.events()}
        pending = {p.event_id for p in await store.pending_outbox(limit=1_000_000)}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert set(acknowledged) <= pending


# --- retention ----------------------------------------------------------------------------------

DAY = 86400.0


async def test_age_retention_keeps_pending_events(tmp_path: Path) -> None:
    now = 100 * DAY
    config = StoreConfig(path=tmp_path / "g.db", retention_days=30)
    async with Store.open(tmp_path / "g.db", config) as store:
        old = NewEvent("fall", "critical", "firing", device_id="w1", created_at=now - 40 * DAY)
        old_published = await store.append_event(old)
        old_pending = await store.append_event(old)
        recent = dataclasses_replace(old, created_at=now - DAY)
        recent_published = await store.append_event(recent)
        await store.mark_published([old_published, recent_published])
        await store.record_window(WindowRecord("w1", now - 40 * DAY))
        await store.record_window(WindowRecord("w1", now - DAY))

        result = await store.run_retention(now=now)
        assert (result.events, result.windows) == (1, 1)
        assert {e.event.id for e in await store.events()} == {old_pending, recent_published}
        assert [p.event_id for p in await store.pending_outbox()] == [old_pending]
        assert [w.received_at for w in await store.windows()] == [now - DAY]


async def test_raw_windows_have_their_own_retention(tmp_path: Path) -> None:
    from gatewayd.store import RawSamples

    now = 10 * DAY
    raw = RawSamples("int16", 64, 32, 64, b"\x00" * 1024, b"\x00" * 1536)
    config = StoreConfig(
        path=tmp_path / "g.db", keep_raw_windows=True, raw_retention_hours=24, retention_days=30
    )
    async with Store.open(tmp_path / "g.db", config) as store:
        await store.record_window(WindowRecord("w1", now - 2 * DAY, kind="window", raw=raw))
        await store.record_window(WindowRecord("w1", now - 3600, kind="window", raw=raw))
        result = await store.run_retention(now=now)
        assert (result.raw_windows, result.windows) == (1, 0)
        assert [w.has_raw for w in await store.windows()] == [False, True]


async def test_size_retention_drops_windows_then_published_events_never_pending(
    tmp_path: Path,
) -> None:
    now = 10 * DAY
    config = StoreConfig(path=tmp_path / "g.db", max_size_mb=1, retention_days=3650)
    options = StoreOptions(retention_interval_s=3600)
    async with Store.open(tmp_path / "g.db", config, options) as store:
        pad = "x" * 2000
        published = [
            await store.append_event(
                NewEvent("a", "info", "firing", {"pad": pad}, "w1", created_at=now)
            )
            for _ in range(300)
        ]
        await store.mark_published(published)
        pending = [
            await store.append_event(
                NewEvent("a", "info", "firing", {"pad": pad}, "w1", created_at=now)
            )
            for _ in range(300)
        ]
        for i in range(300):
            await store.record_window(WindowRecord("w1", now, result={"pad": pad, "i": i}))
        assert (await store.stats()).live_bytes > 1024 * 1024

        result = await store.run_retention(now=now)
        stats = await store.stats()
        assert result.windows == 300  # every window went before any event
        assert 0 < result.events <= 300
        assert result.over_size  # only pending events left, still over 1 MB
        assert stats.outbox_pending == 300
        assert {p.event_id for p in await store.pending_outbox(limit=1000)} == set(pending)
        assert result.freed_pages > 0
        assert stats.file_bytes < 2 * 1024 * 1024 + 64 * 1024  # space went back to the FS


async def test_the_schema_itself_refuses_to_delete_a_pending_event(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with Store.open(path) as store:
        event_id = await store.append_event(alert())
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="pending outbox row"):
        conn.execute("DELETE FROM events WHERE id = ?", (event_id,))
    conn.close()


def dataclasses_replace(event: NewEvent, **changes: object) -> NewEvent:
    import dataclasses

    return dataclasses.replace(event, **changes)  # type: ignore[arg-type]


async def test_the_writer_runs_retention_by_itself(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "g.db", retention_days=1)
    clock = [100 * DAY]
    options = StoreOptions(retention_interval_s=0.05, clock=lambda: clock[0])
    async with Store.open(tmp_path / "g.db", config, options) as store:
        await store.record_window(WindowRecord("w1", clock[0] - 2 * DAY))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not await store.windows():
                break
        assert await store.windows() == []
        assert (await store.stats()).last_retention is not None
