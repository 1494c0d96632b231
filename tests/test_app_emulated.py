"""The whole gateway, in-process: emulated wearables → real bleak → run_gateway → mosquitto.

Real parts everywhere (STYLE.md): the emulated BlueZ on a private D-Bus, a private mosquitto on an
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
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from gatewayd.app import run_gateway
from gatewayd.config import Config, load_config
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.virtual import Fleet, FleetSetup, build_fleet, running
from gatewayd.link.registry import PairedDevice
from tests.emulator_fixtures import release_bleak_manager
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

RULES = """
[rules.hr]
min_confidence = 0.0
min_signal_quality = 0
[rules.tachycardia]
rest_bpm = 100.0
light_bpm = 100.0
vigorous_bpm = 100.0
unknown_bpm = 100.0
hysteresis_bpm = 5.0
min_duration_s = 0.0
cooldown_s = 0.0
[rules.abrupt_change]
cooldown_s = 0.0
"""


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
    elif parts[-1] == "alerts":
        received.alerts.append(body)
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
            "SELECT count(*) FROM outbox WHERE done_at IS NULL AND device_id IS NOT NULL"
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


async def build(fake: FakeBluez) -> tuple[Fleet, list[PairedDevice]]:
    """Two wearables with a planted tachycardia each (at different times)."""
    recordings = [
        generate_recording(1, MINUTES, seed=1, events=[("tachycardia", 20.0, 40.0, 150.0)]),
        generate_recording(2, MINUTES, seed=2, events=[("tachycardia", 50.0, 40.0, 145.0)]),
    ]
    setup = FleetSetup(devices=2, speed=SPEED, tau_mbits=3500, min_conf_e4=5000)
    fleet = await build_fleet(fake, recordings, setup)
    devices = [
        PairedDevice(f"wrist-{i}", device.address, "wearable", wearable.core.spec.name)
        for i, (device, wearable) in enumerate(fleet.wearables)
    ]
    return fleet, devices


@dataclass
class Running:
    """A gateway started in the background, with what it told systemd."""

    task: asyncio.Task[int]
    stop: asyncio.Event
    notes: list[str]


@contextlib.asynccontextmanager
async def gateway(config: Config, devices: list[PairedDevice]) -> AsyncIterator[Running]:
    """run_gateway as a task; stopped through its Event (and awaited) on exit."""
    stop = asyncio.Event()
    notes: list[str] = []
    task = asyncio.create_task(
        run_gateway(
            config,
            registry_devices=devices,
            ready=lambda: notes.append("READY=1"),
            watchdog=lambda: notes.append("WATCHDOG=1"),
            status=lambda line: notes.append(f"STATUS={line}"),
            stop=stop,
            models_dir=Path(config.gateway.state_dir) / "no-models",
            watchdog_interval_s=0.5,
        )
    )
    try:
        yield Running(task, stop, notes)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(30):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()


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
        async with gateway(config, devices) as gw, running(fleet, SPEED):
            await wait_for(lambda: _ready(gw), 15, "READY=1")
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
    # The gateway knew it had no model: a technical event in the log (not an MQTT alert).
    events = await asyncio.to_thread(_gateway_events, config.store.path)
    assert "model_missing" in events


def _gateway_events(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT kind FROM events WHERE device_id IS NULL")]
    finally:
        conn.close()


async def _ready(gw: Running) -> bool:
    if gw.task.done():
        pytest.fail(f"gateway exited early with {gw.task.result()}")
    return "READY=1" in gw.notes


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
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker)
    fleet, devices = await build(fake)
    received = Received()
    subscribed = asyncio.Event()
    sub = asyncio.create_task(subscribe(mosquitto_broker, received, subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        async with gateway(config, devices) as gw, running(fleet, SPEED):
            await wait_for(lambda: _ready(gw), 15, "READY=1")
            await wait_for(lambda: _some_telemetry(received), 20, "the first telemetry")
            await mosquitto_broker.stop()
            _, before, _ = await asyncio.to_thread(read_db, config.store.path)
            await asyncio.sleep(5.0)  # the outage: the stream goes on, alerts pile up
            _, during, _ = await asyncio.to_thread(read_db, config.store.path)
            await mosquitto_broker.start()
            await asyncio.wait_for(_all_done(fleet), DEADLINE_S)
            total = sum(w.core.windows_total for _, w in fleet.wearables)
            await wait_for(lambda: _stored_and_published(config, total), 30,
                           "every window stored and every alert published")  # fmt: skip
            await wait_for(lambda: _received_all(config, received), 15,
                           "the subscriber to receive every alert")  # fmt: skip
        assert await gw.task == 0
    finally:
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub

    _, stored, _ = await asyncio.to_thread(read_db, config.store.path)
    written_meanwhile = {e["id"] for e in during} - {e["id"] for e in before}
    got = [a["event_id"] for a in received.alerts]
    assert written_meanwhile <= set(got)
    # In order per device: the first arrival of each event follows the event log's order.
    for device in devices:
        log_order = [e["id"] for e in stored if e["device_id"] == device.device_id]
        first_seen = list(dict.fromkeys(
            a["event_id"] for a in received.alerts if a["device_id"] == device.device_id
        ))  # fmt: skip
        assert first_seen == log_order
    assert any(s["state"] == "online" for s in received.status[1:]), "online again after restart"


async def _some_telemetry(received: Received) -> bool:
    return sum(len(v) for v in received.telemetry.values()) > 0


async def _received_all(config: Config, received: Received) -> bool:
    _, stored, _ = await asyncio.to_thread(read_db, config.store.path)
    return {e["id"] for e in stored} <= {a["event_id"] for a in received.alerts}
