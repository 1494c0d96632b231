"""The real pipeline into the real publisher, store and mosquitto: what reaches a subscriber.

No timing assertions: counts and order of what a subscriber receives.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gatewayd.link.events import FrameReceived, LinkUp
from gatewayd.pipeline import Pipeline
from gatewayd.publish.build import STATE_REFRESH_S, DeviceView, state_changed
from gatewayd.publish.outbox import StoreOutbox
from gatewayd.rules.config import RulesConfig
from gatewayd.rules.engine import RuleEngine
from gatewayd.store.store import Store
from tests.mqtt_fixtures import Broker, needs_mosquitto
from tests.test_pipeline import T0, summary
from tests.test_publish_mqtt import GW, make_publisher, running, subscribe

pytest_plugins = ["tests.mqtt_fixtures"]

WINDOW_S = 8.0


@needs_mosquitto
@pytest.mark.asyncio
async def test_an_unchanged_device_publishes_its_state_on_change_not_per_window(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    windows = 60
    device = f"gatewayd/{GW}/devices/w1"
    async with (
        Store.open(tmp_path / "events.db") as store,
        subscribe(mosquitto_broker, f"{device}/#", f"gatewayd/{GW}/status") as sub,
    ):
        publisher = make_publisher(mosquitto_broker.port, StoreOutbox(store, GW))  # type: ignore[arg-type]
        async with running(publisher):
            pipeline = Pipeline(
                gateway_id=GW,
                topics=publisher.topics,
                engine=RuleEngine(RulesConfig()),
                store=store,
                publisher=publisher,
            )
            async with pipeline:
                await pipeline.submit(LinkUp("w1", "hci0", None, 247))
                # The same wearable values every window (a heart rate wobbling by 0.1 bpm).
                for n in range(windows):
                    hr_cbpm = 7250 + 10 * (n % 2)
                    await pipeline.submit(
                        FrameReceived("w1", summary(n, hr_cbpm=hr_cbpm), T0 + n * WINDOW_S)
                    )
                # One change: the battery drops; published with its window.
                await pipeline.submit(
                    FrameReceived("w1", summary(windows, battery=89), T0 + windows * WINDOW_S)
                )
        # Stopped: status "offline" is the publisher's last message, so everything is in.
        await sub.wait(
            lambda: any(s["state"] == "offline" for s in sub.on(f"gatewayd/{GW}/status")),
            "status offline",
        )
    telemetry = sub.on(f"{device}/telemetry")
    assert [t["seq"] for t in telemetry] == list(range(windows + 1))
    states = sub.on(f"{device}/state")
    # Link up, the first window, a refresh each STATE_REFRESH_S of last_seen, the battery drop:
    # at most these. Frames processed together (one store commit, up to 32) publish only the
    # group's last state, and a state not yet sent is replaced by a newer one (the retained
    # state is the latest), so on a busy machine the link-up state and the refreshes may fold
    # into later ones: the 61 frames make at least two groups, so at least two states.
    refreshes = int((windows - 1) * WINDOW_S // STATE_REFRESH_S)
    assert 2 <= len(states) <= 2 + refreshes + 1, [s.get("last_seen") for s in states]
    batteries = [s.get("battery_pct") for s in states]
    windowed = states[1:] if batteries[0] is None else states  # the link-up state, if alone
    assert [s.get("battery_pct") for s in windowed] == [90] * (len(windowed) - 1) + [89]
    last = datetime.fromtimestamp(T0 + windows * WINDOW_S, UTC)
    assert states[-1]["last_seen"] == last.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert all(s["connected"] for s in states)
    assert all(s["hr_bpm"] in (72.5, 72.6) for s in windowed)


def test_state_changed_on_slow_values_big_hr_moves_and_refreshes_only() -> None:
    base = DeviceView("w1", connected=True, last_seen=T0, battery_pct=90, hr_bpm=72.0)
    assert state_changed(None, base)
    assert not state_changed(base, base)
    assert not state_changed(base, replace(base, last_seen=T0 + 8, hr_bpm=74.9))
    assert not state_changed(base, replace(base, signal_quality=0.5, last_seen=T0 + 59))
    assert state_changed(base, replace(base, last_seen=T0 + STATE_REFRESH_S))
    assert state_changed(base, replace(base, hr_bpm=77.0))
    assert state_changed(base, replace(base, hr_bpm=None))
    assert state_changed(base, replace(base, battery_pct=89))
    assert state_changed(base, replace(base, connected=False))
    assert state_changed(base, replace(base, activity="rest"))
    assert state_changed(base, replace(base, firmware="1.2.0"))
