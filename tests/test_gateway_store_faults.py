"""The event log in trouble, with the gateway running as `gatewayd run` builds it (build_gateway,
without the link), a real mosquitto and a real SQLite file: a write lock held for 10 s by another
process, a full disk (a small tmpfs, when root), the file deleted or corrupted under it. Alerts
keep reaching MQTT meanwhile, an alert says the log is degraded, and nothing acknowledged is
lost."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gatewayd.app import Gateway, build_gateway
from gatewayd.config import Config, load_config
from gatewayd.link.events import FrameReceived, LinkUp
from gatewayd.protocol.messages import MessageFlags, Summary
from tests import disk
from tests.mqtt_fixtures import Broker

pytest_plugins = ["tests.mqtt_fixtures"]

T0 = 1_790_000_000.0
GW = "gw-store"


def write_config(tmp_path: Path, port: int, state_dir: Path) -> Config:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GW}"\nstate_dir = "{state_dir}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n',
        encoding="utf-8",
    )
    return load_config(path, env={})


def summary(seq: int, battery: int = 80) -> Summary:
    return Summary(
        seq=seq, t_ms=int((T0 + 8 * seq) * 1000), flags=MessageFlags.CLOCK_SYNCED, activity=0,
        pruning_pct=40, activity_conf_e4=9000, entropy_mbits=2500, hr_cbpm=7200,
        signal_quality=90, battery_pct=battery,
    )  # fmt: skip


class Alerts:
    """Every alert the gateway publishes (device and gateway level), as a subscriber sees it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, payload: dict[str, Any]) -> None:
        self.seen.append(payload)
        self._changed.set()

    def kinds(self) -> list[tuple[str, str]]:
        return [(a["kind"], a["state"]) for a in self.seen]

    async def wait_for(self, kind: str, state: str = "raised", timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s):
            while (kind, state) not in self.kinds():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def running(config: Config, broker: Broker) -> AsyncIterator[tuple[Gateway, Alerts]]:
    alerts = Alerts()
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(f"gatewayd/{GW}/#", qos=1)

        async def collect() -> None:
            async for message in sub.messages:
                topic = str(message.topic)
                if topic.endswith("/alerts") and isinstance(message.payload, bytes):
                    alerts.add(json.loads(message.payload))

        collector = asyncio.create_task(collect())
        try:
            async with build_gateway(
                config, devices=[], models_dir=config.gateway.state_dir / "none", with_link=False
            ) as gateway:
                await gateway.pipeline.submit(LinkUp("w1", "hci0", None, 247))
                yield gateway, alerts
        finally:
            collector.cancel()


async def feed(gateway: Gateway, seqs: range, battery: int = 80) -> None:
    for seq in seqs:
        t = T0 + 8 * seq
        await gateway.pipeline.submit(FrameReceived("w1", summary(seq, battery), t + 8))


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    print("released", flush=True)
    """
)


@pytest.mark.asyncio
async def test_a_ten_second_write_lock_held_elsewhere_delays_nothing_and_loses_nothing(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port, tmp_path)
    async with running(config, mosquitto_broker) as (gateway, alerts):
        await feed(gateway, range(5))
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, str(config.store.path), "10",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        # While the lock is held: windows keep coming, and a low battery is an alert at once.
        await feed(gateway, range(5, 20))
        await feed(gateway, range(20, 21), battery=5)
        await alerts.wait_for("low_battery")
        await alerts.wait_for("event_log_degraded")
        # ... while the log still holds its writes in memory: the lock is not released yet.
        assert gateway.store.problem is not None
        assert gateway.store.problem.cause == "locked"
        assert await holder.stdout.readline() == b"released\n"
        await holder.wait()
        await alerts.wait_for("event_log_degraded", "cleared")
        await gateway.pipeline.drain()
    stored = await asyncio.to_thread(rows, config.store.path, "SELECT seq FROM windows")
    assert sorted(s for (s,) in stored) == list(range(21))
    kinds = await asyncio.to_thread(
        rows, config.store.path, "SELECT kind, state FROM events ORDER BY rowid"
    )
    assert ("low_battery", "raised") in kinds
    assert ("event_log_degraded", "raised") in kinds
    assert ("event_log_degraded", "cleared") in kinds


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with disk.small_tmpfs(tmp_path / "state", "2m") as mount:
        yield mount


@pytest.mark.asyncio
async def test_a_full_disk_keeps_alerts_flowing_and_the_log_catches_up_when_space_is_freed(
    mosquitto_broker: Broker, tmp_path: Path, small_tmpfs: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port, small_tmpfs)
    filler = small_tmpfs / "filler"
    async with running(config, mosquitto_broker) as (gateway, alerts):
        await feed(gateway, range(5))
        await asyncio.to_thread(disk.take_every_free_block, filler)
        seq = 5
        while gateway.store.problem is None:  # the disk fills: the next writes fail
            await feed(gateway, range(seq, seq + 10))
            seq += 10
            await asyncio.sleep(0.05)
        assert gateway.store.problem.cause == "disk_full"
        await feed(gateway, range(seq, seq + 1), battery=5)
        seq += 1
        await alerts.wait_for("low_battery")
        await alerts.wait_for("event_log_degraded")
        await asyncio.to_thread(filler.unlink)  # the operator frees space
        await alerts.wait_for("event_log_degraded", "cleared")
    stored = await asyncio.to_thread(rows, config.store.path, "SELECT seq FROM windows")
    assert sorted(s for (s,) in stored) == list(range(seq))
    kinds = await asyncio.to_thread(rows, config.store.path, "SELECT kind, state FROM events")
    assert ("low_battery", "raised") in kinds


@pytest.mark.asyncio
async def test_the_log_deleted_while_running_is_noticed_and_a_fresh_one_carries_on(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port, tmp_path)
    async with running(config, mosquitto_broker) as (gateway, alerts):
        await feed(gateway, range(3))
        await feed(gateway, range(3, 4), battery=5)
        await alerts.wait_for("low_battery")
        await asyncio.to_thread(config.store.path.unlink)
        await alerts.wait_for("event_log_replaced")
        await feed(gateway, range(4, 8), battery=5)
        await gateway.pipeline.drain()
    stored = await asyncio.to_thread(rows, config.store.path, "SELECT seq FROM windows")
    assert sorted(s for (s,) in stored) == [4, 5, 6, 7]  # the new log; the old one was deleted
    kinds = await asyncio.to_thread(rows, config.store.path, "SELECT kind, state FROM events")
    assert ("event_log_replaced", "raised") in kinds
    # The open low-battery alert was carried into the fresh log, so it is not raised again.
    assert kinds.count(("low_battery", "raised")) == 1


@pytest.mark.asyncio
async def test_the_log_found_corrupt_while_running_is_moved_aside_and_alerts_keep_flowing(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker.port, tmp_path)
    path = config.store.path
    async with running(config, mosquitto_broker) as (gateway, alerts):
        await feed(gateway, range(20))
        async with asyncio.timeout(30):  # processed, then committed
            while gateway.pipeline.stats.windows < 20:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.05)
        await gateway.store.flush()
        await asyncio.to_thread(disk.scribble_over_windows, path)
        # The next window's write reads the garbage; its low battery must still be alerted.
        await feed(gateway, range(20, 21), battery=5)
        await alerts.wait_for("low_battery")
        await alerts.wait_for("event_log_replaced")
        await alerts.wait_for("event_log_degraded", "cleared")
        await feed(gateway, range(21, 24), battery=5)
        await gateway.pipeline.drain()
    moved = await asyncio.to_thread(lambda: sorted(tmp_path.glob(f"{path.name}.corrupt-*")))
    assert moved  # kept beside, never deleted
    stored = await asyncio.to_thread(rows, path, "SELECT seq FROM windows")
    assert sorted(s for (s,) in stored) == [20, 21, 22, 23]  # held, then written to the new log
    kinds = await asyncio.to_thread(rows, path, "SELECT kind, state FROM events")
    assert ("event_log_replaced", "raised") in kinds
    assert kinds.count(("low_battery", "raised")) == 1
    assert await asyncio.to_thread(rows, path, "PRAGMA integrity_check") == [("ok",)]
