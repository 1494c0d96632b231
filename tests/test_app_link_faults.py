"""Link faults with the whole gateway running in-process (run_gateway, real bleak against the
emulated BlueZ, a real mosquitto, SQLite): an impostor at a paired address never lands data under
the victim's id and raises a technical alert; a bluetoothd that stops answering does not hold
the shutdown. And the paired-device list changed beside the running gateway (read from its
state directory): a wearable paired while it runs is connected without a restart and without
touching the others; one renamed streams on under its new id, nothing lost or repeated; one
paired again after it was untrusted streams again; one taken off the list is disconnected, its
open alert cleared (reason unpaired) and its retained topics emptied, and its connection slot
goes to a wearable that waited for one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from gatewayd.app import ShutdownTimeouts
from gatewayd.config import Config, load_config
from gatewayd.datasets.synthetic import generate_recording
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.bluez import FakeDevice
from gatewayd.emulator.faults import FaultPlan
from gatewayd.emulator.virtual import Fleet, FleetSetup, build_fleet, running
from gatewayd.emulator.wearable import WearableCore
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from gatewayd.protocol.messages import SampleFormat
from gatewayd.store.report import EventLogReader
from tests.emulator_fixtures import EmulatorEnv, release_bleak_manager, run_gatewayd
from tests.gateway_task import gateway_task, is_ready
from tests.mqtt_fixtures import MOSQUITTO, Broker
from tests.test_app_restart import counts

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


def write_config(tmp_path: Path, broker: Broker, extra: str = "") -> Config:
    path = tmp_path / "gatewayd.toml"
    path.write_text(
        f'[gateway]\nid = "{GW}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n' + extra,
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


async def stored(db: Path, device_id: str) -> int:
    """The windows of ``device_id`` in the event log."""
    return (await asyncio.to_thread(windows_by_device, db)).get(device_id, 0)


def at_least(db: Path, device_id: str, count: int) -> Callable[[], Awaitable[bool]]:
    """A `wait_for` condition: the event log holds ``count`` windows of ``device_id``."""

    async def check() -> bool:
        return await stored(db, device_id) >= count

    return check


@contextlib.asynccontextmanager
async def alerts_of(
    broker: Broker, topic: str = f"gatewayd/{GW}/devices/+/alerts"
) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(topic, qos=1)

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

    async with alerts_of(mosquitto_broker) as seen:

        async def untrusted_alert() -> bool:
            return any(p["kind"] == "device_untrusted" for _, p in seen)

        async with gateway_task(config, devices) as gw, running(fleet, SPEED):
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(at_least(db, "other", 10), 60, "the genuine wearable's windows")
            await wait_for(untrusted_alert, 60, "a device_untrusted alert")
        assert await gw.task == 0
    assert await stored(db, "victim") == 0, "impostor data landed under the victim's id"
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

    async with running(fleet, SPEED), gateway_task(config, devices) as gw:
        await wait_for(lambda: is_ready(gw), 15, "READY=1")
        await wait_for(at_least(config.store.path, "w0", 3), 60, "windows from the wearable")
        fake.hang()  # bluetoothd answers no method call from now on
        gw.stop.set()
        # A safety net only: the shutdown's own bounds end it (docs/running.md).
        async with asyncio.timeout(bound.total_s + 30):
            code = await asyncio.shield(gw.task)
    assert code == 0
    assert fake.unanswered >= 1, "the disconnect went to bluetoothd and was never answered"
    assert gw.notes[-1] == "STATUS=stopped"


# ---- the paired-device list changed beside the running gateway (docs/pairing.md) ----------------

#: Safety net only: every wait ends on what it waits for.
LIMIT_S = 60.0


@pytest.mark.asyncio
async def test_wearables_beyond_the_slots_raise_a_gateway_alert_and_status_says_so(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(
        write_config, tmp_path, mosquitto_broker, "[ble]\nslots_per_adapter = 2\n"
    )
    recordings = [generate_recording(i + 1, 2.0, seed=i + 1) for i in range(3)]
    fleet = await build_fleet(fake, recordings, FleetSetup(devices=3, speed=SPEED, decoy=False))
    devices = [
        PairedDevice(f"w{i}", device.address, "wearable", f"w{i}")
        for i, (device, _) in enumerate(fleet.wearables)
    ]
    async with alerts_of(mosquitto_broker, f"gatewayd/{GW}/alerts") as seen:

        async def raised() -> bool:
            return any(p["kind"] == "connection_slots_full" for _, p in seen)

        async with running(fleet, SPEED), gateway_task(config, devices) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(raised, LIMIT_S, "the connection_slots_full gateway alert")

            async def status_says_so() -> bool:
                return any("wait for a connection slot" in n for n in gw.notes)

            await wait_for(status_says_so, LIMIT_S, "STATUS= naming the wait for a slot")
            assert sum(d.connected for d, _ in fleet.wearables) == 2
        assert await gw.task == 0
    (alert,) = [p for _, p in seen if p["kind"] == "connection_slots_full"]
    assert (alert["state"], alert["severity"], alert["category"]) == (
        "raised",
        "warning",
        "technical",
    )
    assert alert["message"].startswith("1 device(s) wait for a connection slot, all 2 are taken")
    assert alert["details"] == {"waiting": 1, "slots": 2}


async def two_wearables(
    fake: FakeBluez, broker: Broker, tmp_path: Path, subject: int, first_id: str
) -> tuple[Config, Fleet, DeviceRegistry]:
    """A gateway config and two emulated wearables (not yet running), the first paired."""
    config = await asyncio.to_thread(write_config, tmp_path, broker)
    recordings = [generate_recording(subject + i, 6.0, seed=subject + i) for i in range(2)]
    fleet = await build_fleet(fake, recordings, FleetSetup(devices=2, speed=SPEED, decoy=False))
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    first = fleet.wearables[0][0]
    await asyncio.to_thread(registry.add, first.address, "wearable", "w", alias=first_id)
    return config, fleet, registry


def connects(fake: FakeBluez, path: str) -> int:
    return sum(1 for c in fake.call_log if c.member == "Connect" and c.path == path)


@pytest.mark.asyncio
async def test_a_wearable_paired_while_the_gateway_runs_streams_without_a_restart(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config, fleet, registry = await two_wearables(fake, mosquitto_broker, tmp_path, 1, "first")
    (first, _), (second, _) = fleet.wearables
    db = config.store.path

    async with running(fleet, SPEED), gateway_task(config, None) as gw:
        await wait_for(lambda: is_ready(gw), 15, "READY=1")
        await wait_for(at_least(db, "first", 3), LIMIT_S, "the first wearable's windows")
        assert "second" not in await asyncio.to_thread(windows_by_device, db)
        # `gatewayd pair` beside the running gateway: it writes the list, nothing else.
        await asyncio.to_thread(registry.add, second.address, "wearable", "w", alias="second")
        await wait_for(
            at_least(db, "second", 3), LIMIT_S, "windows of the wearable paired while it runs"
        )
        assert connects(fake, first.path) == 1, "the first wearable's link was never touched"
        # Renamed: served under the new id from where the old one stopped.
        await asyncio.to_thread(registry.rename, "first", "first-b")
        await wait_for(at_least(db, "first-b", 3), LIMIT_S, "windows under the new id")
        assert connects(fake, second.path) == 1, "the second wearable's link was never touched"
    assert await gw.task == 0
    seqs = (await asyncio.to_thread(counts, db))["seqs"]
    old, new = seqs["first"], seqs["first-b"]
    assert new[0] == old[-1] + 1, "the new id's windows follow the old id's"
    assert old + new == list(range(old[0], new[-1] + 1)), "nothing lost, nothing twice"
    assert connects(fake, first.path) == 2, "stopped under the old id, started under the new"


@pytest.mark.asyncio
async def test_a_wearable_taken_off_the_list_is_let_go_and_its_slot_serves_another(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        mosquitto_broker,
        "homeassistant_discovery = true\n[ble]\nslots_per_adapter = 1\n",
    )
    # The first wearable falls at 16 s and lies still: its fall alert stays raised. 10 minutes
    # (30 s here) outlast the test on a loaded machine: a recording that ended would add a
    # device_silent alert.
    recordings = [
        generate_recording(2, 10.0, seed=5, events=[("fall", 16.0, 3600.0)],
                           activities=[(7, 600.0)]),
        generate_recording(3, 10.0, seed=3),
    ]  # fmt: skip
    fleet = await build_fleet(fake, recordings, FleetSetup(devices=2, speed=SPEED, decoy=False))
    (first, _), (second, _) = fleet.wearables
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    await asyncio.to_thread(registry.add, first.address, "wearable", "w", alias="first")
    db = config.store.path

    async with alerts_of(mosquitto_broker) as seen:

        def fall(state: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return any(p["kind"] == "fall" and p["state"] == state for _, p in seen)

            return check

        async with running(fleet, SPEED), gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(fall("raised"), LIMIT_S, "the first wearable's fall alert")
            # The second is paired with the one slot taken: it waits for it.
            await asyncio.to_thread(registry.add, second.address, "wearable", "w", alias="second")
            await asyncio.sleep(3 * 2.0)  # the list's poll interval, and more
            assert await stored(db, "second") == 0
            await asyncio.to_thread(registry.remove, "first")
            await wait_for(fall("cleared"), LIMIT_S, "the fall alert cleared")
            await wait_for(at_least(db, "second", 3), LIMIT_S,
                           "the second wearable's windows, in the slot the first left")  # fmt: skip
            assert not first.connected
            before = await stored(db, "first")
            await asyncio.sleep(3 * 2.0)
            assert await stored(db, "first") == before, "nothing more under the removed id"
            retained = await retained_of(mosquitto_broker, f"gatewayd/{GW}/devices/+/+")
            discovery = await retained_of(mosquitto_broker, "homeassistant/#")
        assert await gw.task == 0
    (cleared,) = [p for _, p in seen if p["kind"] == "fall" and p["state"] == "cleared"]
    assert cleared["device_id"] == "first"
    assert (cleared["evidence"]["reason"], cleared["evidence"]["episode"]) == ("unpaired", 1)
    kinds = [p["kind"] for _, p in seen if p["device_id"] == "first"]
    assert kinds == ["fall", "fall", "device_removed"]
    (said,) = [p for _, p in seen if p["kind"] == "device_removed"]
    assert (said["severity"], said["evidence"]["renamed_to"]) == ("info", None)
    assert {t.split("/")[-2] for t in retained} == {"second"}, "the first's state and set emptied"
    owners = {t.split("/")[3].split("_")[0] for t in discovery if t.count("/") == 4}
    assert "second" in owners
    assert "first" not in owners, "Home Assistant removes its entities"
    assert connects(fake, first.path) == 1, "not connected again"
    # `gatewayd devices list` shows what the log knows: the first was let go.
    links = await asyncio.to_thread(links_in_log, db)
    assert links == {"first": "removed", "second": "connected"}


@pytest.mark.asyncio
async def test_a_broken_wearable_replaced_under_the_same_id_while_the_gateway_runs(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config, fleet, registry = await two_wearables(fake, mosquitto_broker, tmp_path, 8, "bed-1")
    (old, old_wearable), (new, new_wearable) = fleet.wearables
    db = config.store.path

    def boots(path: Path) -> set[int]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT DISTINCT boot_id FROM devices WHERE device_id = 'bed-1'")
            return {row[0] for row in rows}
        finally:
            conn.close()

    async with alerts_of(mosquitto_broker) as seen:
        async with running(fleet, SPEED), gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")

            await wait_for(at_least(db, "bed-1", 3), LIMIT_S, "the first wearable's windows")
            # Its replacement is paired under the same id: the old one removed, then the new.
            await asyncio.to_thread(registry.remove, "bed-1")
            await asyncio.to_thread(registry.add, new.address, "wearable", "w", alias="bed-1")

            async def the_new_one() -> bool:
                found = await asyncio.to_thread(boots, db)
                return found == {new_wearable.core.spec.boot_id}

            await wait_for(the_new_one, LIMIT_S, "bed-1 streaming from the new wearable")
            assert not old.connected
            assert new.connected
        assert await gw.task == 0
    assert old_wearable.core.spec.boot_id != new_wearable.core.spec.boot_id
    assert [p["kind"] for _, p in seen] == ["device_removed"], "said once, nothing else"


def links_in_log(path: Path) -> dict[str, str]:
    """The LINK column of `gatewayd devices list`, by device."""
    with EventLogReader.open(path) as log:
        return {a.device_id: a.link for a in log.devices()}


async def one_wearable(
    fake: FakeBluez, broker: Broker, tmp_path: Path, subject: int, minutes: float
) -> tuple[Config, Fleet, FakeDevice, WearableCore, DeviceRegistry]:
    """A gateway config, one emulated wearable (not yet running) and the paired list."""
    config = await asyncio.to_thread(write_config, tmp_path, broker)
    recording = generate_recording(subject, minutes, seed=subject)
    fleet = await build_fleet(fake, [recording], FleetSetup(devices=1, speed=SPEED, decoy=False))
    device, wearable = fleet.wearables[0]
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    return config, fleet, device, wearable.core, registry


@pytest.mark.asyncio
async def test_a_wearable_renamed_while_the_gateway_was_stopped_resumes_where_it_stopped(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config, fleet, device, core, registry = await one_wearable(
        fake, mosquitto_broker, tmp_path, 6, 10.0
    )
    db = config.store.path

    async with running(fleet, SPEED):
        await asyncio.to_thread(registry.add, device.address, "wearable", "w", "w0",
                                numbering=(core.spec.boot_id, core.produced))  # fmt: skip
        async with gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(at_least(db, "w0", 5), LIMIT_S, "windows under the old id")
        assert await gw.task == 0
        await asyncio.to_thread(registry.rename, "w0", "w1")
        stopped_at = core.produced
        async with asyncio.timeout(LIMIT_S):
            while core.produced < stopped_at + 10:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.05)
        async with gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(at_least(db, "w1", 20), LIMIT_S, "windows under the new id")
        assert await gw.task == 0
        # Said once, as a running gateway says it: a third start says nothing more.
        assert await asyncio.to_thread(removals, db) == [("w0", "w1")]
        async with gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
        assert await gw.task == 0
    assert await asyncio.to_thread(removals, db) == [("w0", "w1")]
    found = await asyncio.to_thread(counts, db)
    old, new = found["seqs"]["w0"], found["seqs"]["w1"]
    assert new[0] == old[-1] + 1, "what it made while the gateway was stopped was asked for"
    assert old + new == list(range(old[0], new[-1] + 1)), "nothing lost, nothing twice"
    assert not found["lost"].get("w1")


@pytest.mark.asyncio
async def test_remove_unpair_beside_the_running_gateway_forgets_the_bond_after_it_let_go(
    fake: FakeBluez, private_bus: EmulatorEnv, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config, fleet, device, _, registry = await one_wearable(
        fake, mosquitto_broker, tmp_path, 4, 10.0
    )
    await asyncio.to_thread(registry.add, device.address, "wearable", "w", alias="w0")
    db = config.store.path
    async with alerts_of(mosquitto_broker) as seen:
        async with running(fleet, SPEED), gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")

            await wait_for(at_least(db, "w0", 3), LIMIT_S, "the wearable's windows")
            # Forgotten while its link still ran, the bond's loss would make the link
            # reconnect, find no bond and report the device untrusted.
            removed = await run_gatewayd("--config", str(tmp_path / "gatewayd.toml"), "devices",
                                         "remove", "w0", "--unpair", env=private_bus)  # fmt: skip

            async def said() -> bool:
                return any(p["kind"] == "device_removed" for _, p in seen)

            await wait_for(said, LIMIT_S, "the device_removed event")
            await asyncio.sleep(2.0)  # long enough for a reconnection to fail
        assert await gw.task == 0
    assert removed.returncode == 0
    assert removed.stderr == ""
    assert f"BlueZ forgot its bond with {device.address}" in removed.stdout
    assert not device.paired
    assert [p["kind"] for _, p in seen] == ["device_removed"], "no device_untrusted"
    assert connects(fake, device.path) == 1


async def retained_of(broker: Broker, topic: str, settle_s: float = 1.0) -> list[str]:
    """The topics matching ``topic`` that the broker retains (with a payload)."""
    found: list[str] = []
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle_s):
                async for message in sub.messages:
                    if message.retain and message.payload:
                        found.append(str(message.topic))
    return found


@pytest.mark.asyncio
async def test_a_wearable_paired_again_after_it_was_untrusted_streams_again(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, mosquitto_broker)
    recordings = [generate_recording(7, 4.0, seed=7)]
    # Corrupted fragments make the link read the info characteristic again while streaming.
    setup = FleetSetup(devices=1, speed=SPEED, faults=FaultPlan(corrupt=0.05), decoy=False)
    fleet = await build_fleet(fake, recordings, setup)
    device, wearable = fleet.wearables[0]
    registry = DeviceRegistry.in_state_dir(config.gateway.state_dir)
    await asyncio.to_thread(registry.add, device.address, "wearable", "w", alias="w0",
                            profile="bvp64-acc32-lsb64-int16")  # fmt: skip
    db = config.store.path

    async def untrusted() -> bool:
        return bool((await asyncio.to_thread(registry.get, "w0")).untrusted)

    async with running(fleet, SPEED), gateway_task(config, None) as gw:
        await wait_for(lambda: is_ready(gw), 15, "READY=1")
        await wait_for(at_least(db, "w0", 3), LIMIT_S, "the wearable's windows")
        # Same address, same bond, other sensors: not the wearable that was paired.
        wearable.core.spec = replace(wearable.core.spec, sample_format=SampleFormat.INT8)
        await wait_for(untrusted, LIMIT_S, "the gateway marking it untrusted")
        before = await stored(db, "w0")
        await asyncio.sleep(3 * 2.0)  # the list's poll interval, and more: nothing comes
        assert await stored(db, "w0") == before
        # Its owner checks it and pairs it again, recording the new hardware.
        await asyncio.to_thread(registry.add, device.address, "wearable", "w",
                                profile="bvp64-acc32-lsb64-int8")  # fmt: skip
        await wait_for(at_least(db, "w0", before + 3), LIMIT_S, "windows after pairing it again")
    assert await gw.task == 0


def removals(path: Path) -> list[tuple[str, str | None]]:
    """The device_removed events in the log: (device, renamed_to)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT device_id, json_extract(payload, '$.evidence.renamed_to') FROM events"
            " WHERE kind = 'device_removed' ORDER BY rowid"
        )
        return [(d, r) for d, r in rows]
    finally:
        conn.close()


def stored_and_lost(path: Path, device_id: str) -> tuple[list[int], dict[str, int]]:
    """The seqs stored for a device, in the order stored, and its data_lost counts by cause."""
    found = counts(path)
    return found["seqs"].get(device_id, []), found["lost"].get(device_id, {})


@pytest.mark.asyncio
async def test_what_a_wearable_made_between_its_pairing_and_the_first_connection_is_owed(
    fake: FakeBluez, mosquitto_broker: Broker, tmp_path: Path
) -> None:
    config, fleet, device, core, registry = await one_wearable(
        fake, mosquitto_broker, tmp_path, 5, 5.0
    )
    async with running(fleet, SPEED):
        # Paired (its numbering read then, as `gatewayd pair` does) with no gateway running ...
        paired_at = core.produced
        await asyncio.to_thread(registry.add, device.address, "wearable", "w", "w0",
                                numbering=(core.spec.boot_id, paired_at))  # fmt: skip
        # ... which starts only once the wearable made more than its ring (64) holds.
        async with asyncio.timeout(LIMIT_S):
            while core.produced < paired_at + 100:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.05)

        async def accounted() -> bool:
            seqs, lost = await asyncio.to_thread(stored_and_lost, config.store.path, "w0")
            return core.finished and len(seqs) + sum(lost.values()) >= core.produced - paired_at

        async with gateway_task(config, None) as gw:
            await wait_for(lambda: is_ready(gw), 15, "READY=1")
            await wait_for(accounted, LIMIT_S, "every window since the pairing accounted for")
        assert await gw.task == 0
    seqs, lost = await asyncio.to_thread(stored_and_lost, config.store.path, "w0")
    assert seqs == sorted(set(seqs)), "each once"
    assert min(seqs) >= paired_at
    assert len(seqs) + sum(lost.values()) == core.produced - paired_at
    assert lost, "more than the ring held was made before the gateway came: recorded as lost"
    assert min(seqs) < paired_at + 100, "what the ring still held came back"
