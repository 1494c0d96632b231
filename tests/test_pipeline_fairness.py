"""One device flooding does not hold back the others: the real pipeline and store, in order.

Assertions on order and positions, never on time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gatewayd.config import MqttConfig
from gatewayd.inference.analysis import WindowAnalysis
from gatewayd.link.events import FrameReceived
from gatewayd.pipeline import ANALYSES_PER_DEVICE, Analyse, Pipeline
from gatewayd.protocol.messages import Window
from gatewayd.publish import Publisher
from gatewayd.publish.outbox import StoreOutbox
from gatewayd.rules.config import RulesConfig
from gatewayd.rules.engine import RuleEngine
from gatewayd.store.store import Store
from tests.test_pipeline import T0, summary, window

pytestmark = pytest.mark.asyncio

FLOOD = 300
QUIET = 4


def offline_pipeline(store: Store, analyse: Analyse, queue_size: int = 1024) -> Pipeline:
    """The real pipeline and store; a real publisher, never connected: it queues state and
    telemetry in memory."""
    mqtt = MqttConfig.model_validate({"host": "127.0.0.1", "port": 1})
    publisher = Publisher(mqtt, "gw", StoreOutbox(store, "gw"), env={})
    return Pipeline(
        gateway_id="gw",
        topics=publisher.topics,
        engine=RuleEngine(RulesConfig()),
        store=store,
        publisher=publisher,
        analyse=analyse,
        queue_size=queue_size,
    )


async def test_a_quiet_devices_windows_do_not_wait_for_a_flooding_devices_backlog(
    tmp_path: Path,
) -> None:
    analysed: list[str] = []

    async def analyse(device_id: str, message: Window) -> WindowAnalysis | None:
        analysed.append(device_id)
        return None  # no analysis: the pipeline takes the wearable's own values

    async with Store.open(tmp_path / "events.db") as store:
        pipeline = offline_pipeline(store, analyse, queue_size=FLOOD + QUIET)
        # The flood (offloaded windows, as fast as the link allows) is all queued before the
        # quiet device's first window arrives.
        for n in range(FLOOD):
            message = window(n) if n % 2 else summary(n)
            await pipeline.submit(FrameReceived("flood", message, T0 + n))
        for n in range(QUIET):
            await pipeline.submit(FrameReceived("quiet", window(n), T0 + FLOOD + n))
        assert pipeline.backlog == FLOOD + QUIET
        await asyncio.sleep(0)  # the analyses handed out start
        # Only the flood's first few windows went to the analyser ahead of the quiet device's.
        assert analysed.count("flood") <= ANALYSES_PER_DEVICE
        assert analysed[-QUIET:] == ["quiet"] * QUIET
        async with pipeline:
            pass  # leaving drains every queued event
        assert pipeline.backlog == 0
    with sqlite3.connect(tmp_path / "events.db") as db:
        order = db.execute("SELECT device_id, seq FROM windows ORDER BY id").fetchall()
    assert len(order) == FLOOD + QUIET
    # Round-robin: the quiet device's windows come out one per turn, among the first 2 * QUIET.
    positions = [i for i, (device, _) in enumerate(order) if device == "quiet"]
    assert positions == [1, 3, 5, 7], positions
    # Each device's windows in the order they arrived.
    for device, count in (("flood", FLOOD), ("quiet", QUIET)):
        assert [seq for d, seq in order if d == device] == list(range(count))
    assert analysed.count("flood") == FLOOD // 2


async def test_a_window_still_being_analysed_delays_no_other_device(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def analyse(device_id: str, message: Window) -> WindowAnalysis | None:
        if device_id == "slow":
            await release.wait()  # the model is busy with this window
        return None

    async with Store.open(tmp_path / "events.db") as store:
        pipeline = offline_pipeline(store, analyse)
        async with pipeline:
            await pipeline.submit(FrameReceived("slow", window(0), T0))
            await pipeline.submit(FrameReceived("slow", summary(1), T0 + 1))
            for n in range(QUIET):
                await pipeline.submit(FrameReceived("fast", summary(n), T0 + n))
            # Every "fast" window is processed while the "slow" device's first is analysed;
            # its second waits behind it (each device's events stay in order).
            for _ in range(200):
                if pipeline.stats.windows == QUIET:
                    break
                await asyncio.sleep(0.01)
            assert pipeline.stats.windows == QUIET
            assert pipeline.backlog == 2
            release.set()
    with sqlite3.connect(tmp_path / "events.db") as db:
        order = db.execute("SELECT device_id, seq FROM windows ORDER BY id").fetchall()
    assert order == [*(("fast", n) for n in range(QUIET)), ("slow", 0), ("slow", 1)]
