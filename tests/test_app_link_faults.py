"""Link faults with the whole gateway running in-process (run_gateway, real bleak against the
emulated BlueZ, a real mosquitto, SQLite): an impostor at a paired address never lands data under
the victim's id and raises a technical alert; a bluetoothd that stops answering does not hold
the shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from gatewayd.app import ShutdownTimeouts
from gatewayd.config import Config, load_config
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.faults import FaultPlan
from gatewayd.emulator.virtual import FleetSetup, build_fleet, running
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from tests.emulator_fixtures import release_bleak_manager
from tests.gateway_task import gateway_task, is_ready
from tests.mqtt_fixtures import MOSQUITTO, Broker

pytest_plugins = ["tests.emulator_fixtures", "tests.mqtt_fixtures"]

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed"),
]

SPEED = 20.0
GW = "gw-link"


@pytest_asyncio.fixture
async def fake(fake_bluez: FakeBluez) -> AsyncIterator[FakeBluez]:
    yield fake_bluez
    await release_bleak_manager()


def write_config(tmp_path: Path, broker: Broker) -> Config:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GW}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n',
        encoding="utf-8",
    )
    return load_config(path, env={})


async def wait_for(condition: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def windows_by_device(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT device_id, count(*) FROM windows GROUP BY device_id"))
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def alerts_of(broker: Broker) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(f"gatewayd/{GW}/devices/+/alerts", qos=1)

        async def collect() -> None:
            async for message in sub.messages:
                if isinstance(message.payload, bytes):
                    seen.append((str(message.topic), json.loads(message.payload)))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()


@pytest.mark.asyncio
async def test_an_impostor_at_a_paired_address_lands_nothing_and_raises_a_technical_alert(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker)
    recordings = [generate_recording(i + 1, 2.0, seed=i + 1) for i in range(2)]
    # The first wearable's address is bonded in BlueZ, but the device there lacks the keys.
    setup = FleetSetup(devices=2, speed=SPEED, faults=FaultPlan(impostor=1), decoy=False)
    fleet = await build_fleet(fake, recordings, setup)
    (impostor_device, impostor), (_, genuine) = fleet.wearables
    assert (impostor_device.paired, impostor_device.holds_keys) == (True, False)
    devices = [
        PairedDevice("victim", impostor_device.address, "wearable", "victim"),
        PairedDevice("other", fleet.wearables[1][0].address, "wearable", "other"),
    ]
    db = config.store.path

    async def other_streams() -> bool:
        return (await asyncio.to_thread(windows_by_device, db)).get("other", 0) >= 10

    async with alerts_of(mosquitto_broker) as seen:

        async def untrusted_alert() -> bool:
            return any(p["kind"] == "device_untrusted" for _, p in seen)

        async with gateway_task(config, devices) as gw, running(fleet, SPEED):
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(other_streams, 60, "the genuine wearable's windows")
            await wait_for(untrusted_alert, 60, "a device_untrusted alert")
        assert await gw.task == 0
    stored = await asyncio.to_thread(windows_by_device, db)
    assert "victim" not in stored, "impostor data landed under the victim's id"
    assert impostor.messages_sent == 0
    assert genuine.messages_sent > 0
    untrusted = [(t, p) for t, p in seen if p["kind"] == "device_untrusted"]
    assert {t for t, _ in untrusted} == {f"gatewayd/{GW}/devices/victim/alerts"}
    (_, alert), *_ = untrusted
    assert alert["severity"] == "critical"
    assert alert["category"] == "technical"
    assert alert["evidence"]["untrusted"] == "bond_rejected"
    assert not [p for t, p in seen if t.endswith("/victim/alerts") and p["kind"] == "tachycardia"]


@pytest.mark.asyncio
async def test_a_hung_bluetoothd_does_not_hold_the_shutdown(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker)
    fleet = await build_fleet(
        fake, [generate_recording(3, 2.0, seed=3)], FleetSetup(devices=1, speed=SPEED)
    )
    device, _ = fleet.wearables[0]
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    await asyncio.to_thread(registry.add, device.address, "wearable", "w", alias="w0")
    devices = await asyncio.to_thread(registry.load)
    bound = ShutdownTimeouts()

    async def streaming() -> bool:
        return (await asyncio.to_thread(windows_by_device, config.store.path)).get("w0", 0) >= 3

    async with running(fleet, SPEED), gateway_task(config, devices) as gw:
        await wait_for(lambda: is_ready(gw), 15, "READY=1")
        await wait_for(streaming, 60, "windows from the wearable")
        fake.hang()  # bluetoothd answers no method call from now on
        gw.stop.set()
        # A safety net only: the shutdown's own bounds end it (docs/running.md).
        async with asyncio.timeout(bound.total_s + 30):
            code = await asyncio.shield(gw.task)
    assert code == 0
    assert fake.unanswered >= 1, "the disconnect went to bluetoothd and was never answered"
    assert gw.notes[-1] == "STATUS=stopped"
