"""The whole gateway, in-process: emulated wearables → real bleak → run_gateway → mosquitto.

Real parts everywhere: the emulated BlueZ on a private D-Bus, a private mosquitto on an
ephemeral port, SQLite in tmp_path, and `gatewayd.app.run_gateway` with a stop Event. No model is
installed, so the gateway runs degraded (signal-estimator HR on offloaded windows). Thresholds
are lowered so that the planted tachycardia raises and clears alerts within the test.

No timing assertions: every wait is for a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from gatewayd.bench.soak import RULES
from gatewayd.config import Config, load_config
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import Fleet, FleetSetup, build_fleet, running
from gatewayd.link.registry import PairedDevice
from tests.emulator_fixtures import paired_as_by_gatewayd_pair, release_bleak_manager
from tests.gateway_task import Running, gateway_task, is_ready
from tests.mqtt_fixtures import MOSQUITTO, Broker

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed"),
]

GATEWAY_ID = "gw-test"
SPEED = 12.0
MINUTES = 2.0
#: Generous: a loaded 2-core box may run this several times slower than real time x SPEED.
DEADLINE_S = 35.0
#: The broker outage of the acceptance test, real seconds (OUTAGE_S * SPEED simulated seconds).
OUTAGE_S = 30.0
#: Recording length of the outage test: startup + the outage + the broker reconnect backoff
#: (up to ~19 s after a 30 s outage, docs/mqtt.md) + margin, in simulated minutes.
OUTAGE_MINUTES = 10.0
#: A tachycardia episode every EPISODE_EVERY_S simulated seconds, EPISODE_S long: any 30 s real
#: (360 s simulated) outage covers three or more, wherever it starts. The signal estimator
#: loses track at the jump to 150 bpm and re-acquires ~30 s later, so the alert is raised
#: ~30 s into an episode and cleared ~30 s after it; shorter episodes raise nothing.
EPISODE_EVERY_S = 90.0
EPISODE_S = 40.0
#: PPG-DaLiA's activity id for sitting (gatewayd.datasets.synthetic).
SITTING = 1


@pytest_asyncio.fixture
async def fake(fake_bluez: FakeBluez) -> AsyncIterator[FakeBluez]:
    """The shared fake bluetoothd, closing bleak's manager after the test."""
    yield fake_bluez
    await release_bleak_manager()


def write_config(tmp_path: Path, broker: Broker) -> Config:
    """A config for this test: private broker, state in tmp_path, low alert thresholds."""
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nkeepalive_s = 5\n'
        "[offload]\ntau_bits = 3.5\nmin_confidence = 0.5\n" + RULES,
        encoding="utf-8",
    )
    return load_config(path, env={})


@dataclass
class Received:
    """Everything the subscriber saw, by kind of topic."""

    status: list[dict[str, Any]] = field(default_factory=list)
    telemetry: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    alerts: list[dict[str, Any]] = field(default_factory=list)
    #: Gateway-level events (no device), if the gateway publishes them.
    gateway_alerts: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)


async def subscribe(broker: Broker, received: Received, subscribed: asyncio.Event) -> None:
    """Subscribe to the gateway's whole tree (QoS 1), reconnecting across broker restarts.

    A persistent session (fixed id, clean_session=False) so alerts published while this
    subscriber reconnects are queued for it by the broker.
    """
    while True:
        try:
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                identifier="test-subscriber",
                clean_session=False,
                protocol=aiomqtt.ProtocolVersion.V311,
            ) as client:
                await client.subscribe(f"gatewayd/{GATEWAY_ID}/#", qos=1)
                subscribed.set()
                async for message in client.messages:
                    record(received, str(message.topic), message.payload)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


def record(received: Received, topic: str, payload: Any) -> None:
    """File one message under its kind."""
    assert isinstance(payload, bytes | bytearray)
    body = json.loads(payload)
    parts = topic.split("/")
    if parts[-1] == "status":
        received.status.append(body)
    elif parts[-1] == "telemetry":
        received.telemetry[parts[-2]].append(body)
    elif parts[-1] == "alerts" and parts[-3] == "devices":
        received.alerts.append(body)
    elif parts[-1] == "alerts":
        received.gateway_alerts.append(body)
    elif parts[-1] == "state":
        received.states[parts[-2]] = body


def read_db(path: Path) -> tuple[int, list[dict[str, Any]], int]:
    """(windows, device events in outbox order, pending device events), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        windows = conn.execute("SELECT count(*) FROM windows").fetchone()[0]
        events = [
            dict(row)
            for row in conn.execute(
                "SELECT e.id, e.device_id, e.kind, e.state FROM outbox o JOIN events e"
                " ON e.id = o.event_id WHERE e.device_id IS NOT NULL ORDER BY o.id"
            )
        ]
        pending = conn.execute(
            "SELECT count(*) FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.done_at IS NULL AND e.device_id IS NOT NULL"
        ).fetchone()[0]
        return windows, events, pending
    finally:
        conn.close()


async def wait_for(condition: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> None:
    """Poll ``condition`` every 0.2 s until it holds; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def episodes(first_s: float, minutes: float, bpm: float) -> list[tuple[str, float, float, float]]:
    """Tachycardia episodes (kind, start s, duration s, bpm) from ``first_s``, one a period."""
    out = []
    start = first_s
    while start + EPISODE_S < minutes * 60.0:
        out.append(("tachycardia", start, EPISODE_S, bpm))
        start += EPISODE_EVERY_S
    return out


async def build(
    fake: FakeBluez, minutes: float = MINUTES, *, periodic: bool = False
) -> tuple[Fleet, list[PairedDevice]]:
    """Two wearables with planted tachycardia (at different times): once, or periodically.

    With ``periodic`` the subjects sit throughout: the default schedule's walking or cycling
    would keep the heart rate over the lowered thresholds between episodes, and one alert
    would stay firing instead of firing and resolving once per episode.
    """
    if periodic:
        events = [episodes(20.0, minutes, 150.0), episodes(50.0, minutes, 145.0)]
        activities: list[tuple[int, float]] | None = [(SITTING, minutes * 60.0)]
    else:
        events = [[("tachycardia", 20.0, 40.0, 150.0)], [("tachycardia", 50.0, 40.0, 145.0)]]
        activities = None
    # CPU-bound numpy for a fraction of a second per recording: off the loop all the same.
    recordings = [
        await asyncio.to_thread(
            generate_recording, i + 1, minutes, seed=i + 1, events=planted, activities=activities
        )
        for i, planted in enumerate(events)
    ]
    setup = FleetSetup(devices=2, speed=SPEED, tau_mbits=3500, min_conf_e4=5000)
    fleet = await build_fleet(fake, recordings, setup)
    devices = [
        PairedDevice(
            f"wrist-{i}",
            device.address,
            "wearable",
            wearable.core.spec.name,
            **paired_as_by_gatewayd_pair(wearable.core),
        )
        for i, (device, wearable) in enumerate(fleet.wearables)
    ]
    return fleet, devices


@contextlib.asynccontextmanager
async def gateway(config: Config, devices: list[PairedDevice]) -> AsyncIterator[Running]:
    """The gateway in the background, without a model, its watchdog pinged every 0.5 s."""
    models_dir = Path(config.gateway.state_dir) / "no-models"
    async with gateway_task(config, devices, models_dir=models_dir, watchdog_interval_s=0.5) as gw:
        yield gw


@pytest.mark.asyncio
async def test_alerts_and_telemetry_reach_a_subscriber_and_match_the_event_log(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker)
    fleet, devices = await build(fake)
    received = Received()
    subscribed = asyncio.Event()
    sub = asyncio.create_task(subscribe(mosquitto_broker, received, subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        with capture_logs() as logs:
            async with gateway(config, devices) as gw, running(fleet, SPEED):
                await wait_for(lambda: is_ready(gw), 15, "READY=1")
                await asyncio.wait_for(_all_done(fleet), DEADLINE_S)
                total = sum(w.core.windows_total for _, w in fleet.wearables)
                await wait_for(lambda: _stored_and_published(config, total), 20,
                               "every window stored and every alert published")  # fmt: skip
        assert await gw.task == 0
    finally:
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub

    assert "READY=1" in gw.notes
    assert "WATCHDOG=1" in gw.notes
    assert any(n.startswith("STATUS=") and "no model" in n for n in gw.notes)
    assert received.status[0]["state"] == "online"
    assert received.status[-1] == received.status[-1] | {"state": "offline", "reason": "shutdown"}
    for device in devices:
        assert received.telemetry[device.device_id], f"no telemetry for {device.device_id}"
        assert device.device_id in received.states
    assert received.alerts, "the planted tachycardia must raise at least one alert"
    for alert in received.alerts:
        assert uuid.UUID(alert["event_id"]).version == 7
    tachy = [a for a in received.alerts if a["kind"] == "tachycardia"]
    assert tachy, f"no tachycardia alert among {[a['kind'] for a in received.alerts]}"
    assert all(a["category"] == "physiological" for a in tachy)

    _, stored, pending = await asyncio.to_thread(read_db, config.store.path)
    assert pending == 0
    assert {e["id"] for e in stored} == {a["event_id"] for a in received.alerts}
    # Each device event is logged with its id (EVENT_ID= in the journal, gatewayd/logs.py).
    logged = [r for r in logs if r["event"] in ("alert", "messages lost on the link")]
    assert any(r["event"] == "alert" for r in logged)
    assert sorted(r["event_id"] for r in logged) == sorted(e["id"] for e in stored)
    # The gateway knew it had no model: a technical event in the log (not an MQTT alert).
    events = await asyncio.to_thread(_gateway_events, config.store.path)
    assert "model_missing" in events


def _gateway_events(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT kind FROM events WHERE device_id IS NULL")]
    finally:
        conn.close()


async def _all_done(fleet: Fleet) -> None:
    for _, wearable in fleet.wearables:
        await wearable.done.wait()


async def _stored_and_published(config: Config, total: int) -> bool:
    if not config.store.path.exists():
        return False
    windows, _, pending = await asyncio.to_thread(read_db, config.store.path)
    return windows >= total and pending == 0


@pytest.mark.asyncio
async def test_alerts_written_while_the_broker_is_down_arrive_afterwards_in_order(
    fake: FakeBluez, durable_broker: Broker, tmp_path: Path
) -> None:
    """Acceptance: the broker is stopped for 30 s mid-stream and restarted; every alert raised
    meanwhile arrives afterwards, in order per device (duplicates allowed, QoS 1)."""
    broker = durable_broker
    config = await asyncio.to_thread(write_config, tmp_path, broker)
    fleet, devices = await build(fake, OUTAGE_MINUTES, periodic=True)
    received = Received()
    subscribed = asyncio.Event()
    sub = asyncio.create_task(subscribe(broker, received, subscribed))
    loop = asyncio.get_running_loop()
    snapshot: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        async with gateway(config, devices) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            # The wearables' simulated clocks start here: sim seconds = real seconds x SPEED.
            async with running(fleet, SPEED):
                started = loop.time()
                # One alert delivered live first, so that order is checked across the outage.
                await wait_for(lambda: _some_alert(received), 30, "the first alert")
                await broker.stop()
                outage_from_sim = (loop.time() - started) * SPEED
                before = await asyncio.to_thread(read_db, config.store.path)
                await asyncio.sleep(OUTAGE_S)  # the outage: the stream goes on, alerts pile up
                during = await asyncio.to_thread(read_db, config.store.path)
                outage_to_sim = (loop.time() - started) * SPEED
                streaming = not all(w.done.is_set() for _, w in fleet.wearables)
                restarted_at = datetime.now(UTC)
                await broker.start()
                await asyncio.wait_for(_all_done(fleet), DEADLINE_S)
            # After a 30 s outage the publisher's backoff may wait ~20 s more before it tries.
            await wait_for(lambda: _delivered(config, received, snapshot), 60,
                           "every alert in the log published and received")  # fmt: skip
        assert await gw.task == 0
    finally:
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub

    # The scenario itself: planted episodes fall inside the outage (in simulated time), and
    # the stream went on through it.
    for device, first in zip(devices, (20.0, 50.0), strict=True):
        inside = [
            start
            for _, start, duration, _ in episodes(first, OUTAGE_MINUTES, 0.0)
            if outage_from_sim <= start and start + duration <= outage_to_sim
        ]
        assert inside, (
            f"no episode of {device.device_id} inside the outage (sim s"
            f" {outage_from_sim:.0f}-{outage_to_sim:.0f}): lengthen OUTAGE_MINUTES"
        )
    assert streaming, "the recordings ended before the outage did: lengthen OUTAGE_MINUTES"
    assert during[0] > before[0], "no window stored during the outage: the stream stopped"

    written_meanwhile = {e["id"] for e in during[1]} - {e["id"] for e in before[1]}
    assert written_meanwhile, "no alert was written while the broker was down"
    for device in devices:
        mine = {e["id"] for e in during[1] if e["device_id"] == device.device_id}
        assert mine & written_meanwhile, f"no alert of {device.device_id} during the outage"
    got = [a["event_id"] for a in received.alerts]
    assert written_meanwhile <= set(got), "alerts written during the outage never arrived"
    # Each event arrives (duplicates allowed at QoS 1): the distinct set is the log's.
    _, final, _ = await asyncio.to_thread(read_db, config.store.path)
    assert {e["id"] for e in snapshot} <= set(got) <= {e["id"] for e in final}
    # In order per device: the first arrival of each event follows the event log's order.
    for device in devices:
        log_order = [e["id"] for e in final if e["device_id"] == device.device_id]
        first_seen = list(dict.fromkeys(
            a["event_id"] for a in received.alerts if a["device_id"] == device.device_id
        ))  # fmt: skip
        assert first_seen == [i for i in log_order if i in set(got)], (
            f"{device.device_id}: alerts out of order"
        )
    assert any(
        s["state"] == "online" and datetime.fromisoformat(s["t"]) > restarted_at
        for s in received.status
    ), "the gateway never announced itself online after the broker came back"


async def _delivered(config: Config, received: Received, snapshot: list[dict[str, Any]]) -> bool:
    """Nothing pending and every device event in the log received; keeps the log it saw."""
    _, stored, pending = await asyncio.to_thread(read_db, config.store.path)
    snapshot[:] = stored
    return pending == 0 and {e["id"] for e in stored} <= {a["event_id"] for a in received.alerts}


async def _some_alert(received: Received) -> bool:
    return bool(received.alerts)
