"""The event log's API on a real SQLite file: writes, outbox order, queries, lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gatewayd.config import StoreConfig
from gatewayd.protocol.messages import MessageFlags, SampleFormat, Summary, Window
from gatewayd.store import (
    GATEWAY,
    SCHEMA_VERSION,
    DeviceCursor,
    EventQuery,
    NewEvent,
    RecordRejectedError,
    Store,
    StoreError,
    StoreOptions,
    StoreReentryError,
    window_record_from_message,
)
from gatewayd.store.writer import Op

pytestmark = pytest.mark.asyncio


def alert(device: str | None = "w1", **payload: object) -> NewEvent:
    return NewEvent(
        kind="tachycardia", severity="warning", state="firing", payload=payload, device_id=device
    )


def summary(seq: int = 7) -> Summary:
    return Summary(
        seq=seq,
        t_ms=123_000,
        flags=MessageFlags.OFFLOAD_ENTROPY,
        activity=1,  # ActivityGroup.LIGHT
        pruning_pct=40,
        activity_conf_e4=5000,
        entropy_mbits=4200,
        hr_cbpm=7250,
        signal_quality=90,
        battery_pct=80,
    )


def window_message() -> Window:
    return Window(
        summary=summary(8),
        sample_format=SampleFormat.INT16,
        bvp_rate_hz=64,
        acc_rate_hz=32,
        acc_lsb_per_g=64,
        bvp=np.arange(512, dtype="<i2"),
        acc=np.ones((256, 3), dtype="<i2"),
    )


async def test_open_creates_the_directory_and_sets_the_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "gatewayd.db"
    async with Store.open(path) as store:
        assert store.recovery is None
        assert store.migrated_from == 0
        await store.flush()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
    conn.close()


async def test_a_store_refuses_re_entry(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "g.db")
    async with store:
        with pytest.raises(StoreReentryError, match="already entered"):
            await store.__aenter__()
        with pytest.raises(RuntimeError, match="create a new one"):
            await store.__aenter__()
    with pytest.raises(StoreError, match="not open"):
        await store.append_event(alert())


async def test_append_event_writes_the_event_and_its_outbox_row(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        event_id = await store.append_event(alert(hr=151.5))
        # Committed when append_event returns: another connection sees both rows.
        conn = sqlite3.connect(tmp_path / "g.db")
        row = conn.execute("SELECT kind, payload FROM events WHERE id = ?", (event_id,)).fetchone()
        assert row == ("tachycardia", '{"hr":151.5}')
        outbox = conn.execute(
            "SELECT attempts, done_at FROM outbox WHERE event_id = ?", (event_id,)
        ).fetchone()
        assert outbox == (0, None)
        conn.close()
        (item,) = await store.pending_outbox()
        assert item.event_id == event_id
        assert item.device_id == "w1"
        assert item.event.payload == {"hr": 151.5}


async def test_pending_outbox_is_in_creation_order_per_device_and_overall(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        ids = []
        for i in range(12):
            device = ("a", "b", "c")[i % 3]
            ids.append(await store.append_event(alert(device, i=i)))
        pending = await store.pending_outbox(limit=100)
        assert [p.event_id for p in pending] == ids
        assert ids == sorted(ids)  # UUIDv7 ids follow the outbox order
        assert [p.event_id for p in await store.pending_outbox(limit=5)] == ids[:5]

        assert await store.mark_published(ids[:4]) == 4
        assert await store.mark_published(ids[:4]) == 0  # already done: idempotent
        await store.record_attempts(ids[4:6])
        pending = await store.pending_outbox()
        assert [p.event_id for p in pending] == ids[4:]
        assert [p.attempts for p in pending[:3]] == [1, 1, 0]


async def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db", options=StoreOptions(max_batch=64)) as store:
        ids = await asyncio.gather(*(store.append_event(alert(n=n)) for n in range(300)))
        stats = await store.stats()
        assert stats.events == 300
        assert stats.outbox_pending == 300
        assert stats.items >= 300
        assert stats.largest_batch > 1
        assert stats.batches < 300
        assert [p.event_id for p in await store.pending_outbox(limit=1000)] == list(ids)


async def test_a_bad_item_fails_alone_and_its_batch_commits(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        taken = await store.append_event(alert())
        results = await asyncio.gather(
            store.append_event(alert(n=1)),
            store.append_event(dataclasses.replace(alert(n=2), id=taken)),
            store.append_event(alert(n=3)),
            return_exceptions=True,
        )
        assert isinstance(results[1], RecordRejectedError)
        assert "rejected" in str(results[1])
        assert "UNIQUE" in str(results[1])
        assert isinstance(results[0], str)
        assert isinstance(results[2], str)
        events = await store.events()
        assert [e.event.payload.get("n") for e in events] == [None, 1, 3]
        # The failed item left nothing behind: no second outbox row for the taken id.
        assert len(await store.pending_outbox()) == 3


async def test_payloads_that_are_not_json_are_stored_as_near_as_json_allows(
    tmp_path: Path,
) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        await store.append_event(alert(hr=float("nan"), n=1))
        await store.append_event(alert(when=object()))
        first, second = await store.events()
        assert first.event.payload == {"hr": None, "n": 1}
        assert second.event.payload["when"].startswith("<object object")
    conn = sqlite3.connect(tmp_path / "g.db")
    invalid = [json.loads(r[0]) for r in conn.execute("SELECT invalid FROM events ORDER BY rowid")]
    conn.close()
    assert list(invalid[0]) == ["payload"]
    assert "null" in invalid[0]["payload"]
    assert "repr" in invalid[1]["payload"]


async def test_gateway_events_have_no_device(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        event_id = await store.append_event(
            NewEvent("store_recovered", "critical", "firing", {"moved": ["x"]})
        )
        (item,) = await store.pending_outbox()
        assert item.event_id == event_id
        assert item.device_id is None
        assert (await store.stats()).devices == 0


async def test_events_query_filters(tmp_path: Path) -> None:
    clock = iter(float(t) for t in range(1000, 2000))
    options = StoreOptions(clock=lambda: next(clock))
    async with Store.open(tmp_path / "g.db", options=options) as store:
        for i in range(6):
            kind = "fall" if i % 2 else "tachycardia"
            await store.append_event(
                NewEvent(kind, "warning", "firing", {"i": i}, device_id=f"w{i % 3}")
            )
        await store.append_event(NewEvent("store_recovered", "critical", "raised", {"i": 6}))

        async def numbers(**query: Any) -> list[int]:
            return [e.event.payload["i"] for e in await store.events(EventQuery(**query))]

        assert await numbers() == [0, 1, 2, 3, 4, 5, 6]
        assert await numbers(device="w1") == [1, 4]
        assert await numbers(device=GATEWAY) == [6]
        assert await numbers(kinds=("fall",)) == [1, 3, 5]
        assert await numbers(min_severity="critical") == [6]
        since = (await store.events())[3].event.created_at
        assert await numbers(since=since) == [3, 4, 5, 6]
        assert await numbers(limit=2) == [5, 6]  # the newest two, oldest first


async def test_record_window_from_messages_with_and_without_raw(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "g.db", keep_raw_windows=True)
    async with Store.open(tmp_path / "g.db", config) as store:
        rec = window_record_from_message("w1", summary(), 100.0)
        assert rec.kind == "summary"
        assert rec.hr_bpm == 72.5
        assert rec.activity == "light"
        assert rec.offloaded
        first = await store.record_window(rec)
        raw_rec = window_record_from_message("w1", window_message(), 108.0, keep_raw=True)
        raw_rec = dataclasses.replace(
            raw_rec, hr_bpm=74.0, hr_source="gateway-model", model_id="m1", result={"p": [0.9]}
        )
        second = await store.record_window(raw_rec)
        assert second > first
        windows = await store.windows(device="w1")
        assert [w.id for w in windows] == [first, second]
        assert windows[0].has_raw is False
        assert windows[1].has_raw is True
        assert windows[1].result == {"p": [0.9]}
        assert windows[1].model_id == "m1"
    conn = sqlite3.connect(tmp_path / "g.db")
    assert conn.execute("SELECT first_seen, last_seen FROM devices").fetchall() == [(100.0, 108.0)]
    bvp, acc = conn.execute("SELECT bvp, acc FROM raw_windows").fetchone()
    assert np.array_equal(np.frombuffer(bvp, "<i2"), np.arange(512))
    assert len(acc) == 256 * 3 * 2
    conn.close()


async def test_record_windows_commits_a_group_together_and_a_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        good = [window_record_from_message("w1", summary(), 100.0 + n) for n in range(5)]
        bad = dataclasses.replace(good[0], device_id="")
        answers = await store.record_windows(
            [(good[0], None), (good[1], DeviceCursor(7, 2, 101.0)), (bad, None),
             *((w, None) for w in good[2:])]
        )  # fmt: skip
        assert isinstance(answers[2], RecordRejectedError)
        ids = [a for i, a in enumerate(answers) if i != 2]
        assert all(isinstance(a, int) for a in ids)
        assert ids == sorted(ids)
        assert [w.id for w in await store.windows(device="w1")] == ids
        assert (await store.cursors())["w1"].next_seq == 2
        stats = await store.stats()
        # Queued before the first was awaited: one transaction for the five.
        assert stats.batches == 1
        assert stats.largest_batch == 5


async def test_devices_removed_and_not_yet_said_so_are_found(tmp_path: Path) -> None:
    def removed(device: str, at: float) -> NewEvent:
        return NewEvent("device_removed", "info", "raised", device_id=device, created_at=at)

    async with Store.open(tmp_path / "g.db") as store:
        for device in ("a", "b", "c"):
            await store.record_window(window_record_from_message(device, summary(), 100.0))
        await store.append_event(removed("b", 150.0))  # said, after its last window
        await store.append_event(removed("c", 50.0))  # said once, then it streamed again
        await store.append_event(alert("d"))  # never sent a window
        assert await store.unannounced_removals({"a"}) == ["c"]
        assert await store.unannounced_removals(set()) == ["a", "c"]


async def test_raw_samples_are_dropped_unless_configured(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db") as store:  # keep_raw_windows defaults to False
        rec = window_record_from_message("w1", window_message(), 1.0, keep_raw=True)
        await store.record_window(rec)
        (stored,) = await store.windows()
        assert stored.kind == "window"
        assert not stored.has_raw


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "g.db")
    await store.__aenter__()
    tasks = [asyncio.ensure_future(store.append_event(alert(n=n))) for n in range(50)]
    await asyncio.sleep(0)  # let every task submit
    await store.close()
    ids = await asyncio.gather(*tasks)
    conn = sqlite3.connect(tmp_path / "g.db")
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (50,)
    assert {r[0] for r in conn.execute("SELECT id FROM events")} == set(ids)
    conn.close()


async def test_cancelling_a_caller_does_not_revoke_its_write(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db") as store:
        task = asyncio.ensure_future(store.append_event(alert()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.flush()
        assert len(await store.events()) == 1


async def test_a_cancelled_callers_write_frees_its_place_once_committed(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "g.db", options=StoreOptions(max_pending=1)) as store:
        gate = threading.Event()
        writer = store._open_writer()
        held = writer.submit(Op(lambda conn: gate.wait(10), held_value=None))  # writer busy
        tasks = [asyncio.ensure_future(store.append_event(alert(n=n))) for n in range(3)]
        await asyncio.sleep(0)  # the first takes the only place and queues; the others wait
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)
        gate.set()
        # Had the cancelled write kept its place, this would wait forever.
        async with asyncio.timeout(10):
            window_id = await store.record_window(window_record_from_message("w1", summary(), 1.0))
        assert held.result() is True
        assert window_id == 1
        events = await store.events()
        assert [e.event.payload for e in events] == [{"n": 0}]  # the others never queued


async def test_backpressure_bounds_what_is_in_flight(tmp_path: Path) -> None:
    options = StoreOptions(max_pending=4, max_batch=2)
    async with Store.open(tmp_path / "g.db", options=options) as store:
        await asyncio.gather(*(store.append_event(alert(n=n)) for n in range(40)))
        stats = await store.stats()
        assert stats.backpressure_waits > 0
        assert stats.largest_batch <= 2
        assert stats.events == 40


async def test_a_dead_writer_fails_every_caller_instead_of_hanging(tmp_path: Path) -> None:
    def explode(conn: sqlite3.Connection) -> None:
        raise KeyboardInterrupt  # anything that is not an Exception kills the writer thread

    async with Store.open(tmp_path / "g.db") as store:
        await store.append_event(alert())
        results = await asyncio.gather(
            store._submit(lambda: Op(explode, held_value=None)),
            store.append_event(alert()),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) for r in results), results
        with pytest.raises(StoreError, match="writer thread stopped"):
            await store.append_event(alert())
        assert len(await store.events()) == 1  # reads still work
