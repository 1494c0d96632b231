"""The gateway's link layer against virtual wearables, through real bleak and the emulated BlueZ.

Every message a virtual wearable produces must reach the gateway exactly once, in order, with the
payload the wearable sent — through link drops, corrupted fragments, slot limits and many
devices at once. Unpaired devices and the decoy must never be connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from bleak import BleakAdapter
from dbus_fast import BusType, MessageType
from dbus_fast import Message as DBusMessage
from dbus_fast.aio import MessageBus
from structlog.testing import capture_logs

from gatewayd.datasets import load_troika
from gatewayd.datasets.dalia import load_dalia
from gatewayd.datasets.recording import Recording
from gatewayd.datasets.synthetic import generate_recording, write_subject
from gatewayd.emulator import FakeBluez
from gatewayd.emulator.bluez import FakeDevice
from gatewayd.emulator.faults import FaultPlan
from gatewayd.emulator.virtual import DECOY_ADDRESS, Fleet, FleetSetup, build_fleet, running
from gatewayd.link.connection import LinkSettings
from gatewayd.link.events import (
    DeviceRemoved,
    FrameReceived,
    HeartRateReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    MessagesLost,
)
from gatewayd.link.manager import LinkManager
from gatewayd.link.registry import DeviceRegistry, PairedDevice
from gatewayd.protocol.control import decode_info
from gatewayd.protocol.gatt import DATA_CHAR_UUID, SERVICE_UUID
from gatewayd.protocol.messages import Message, MessageFlags, Window, summary_of
from tests.emulator_fixtures import EmulatorEnv, release_bleak_manager, run_gatewayd

pytest_plugins = ["tests.emulator_fixtures"]

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed (apt-get install dbus)"
)

TROIKA = Path(
    os.environ.get("GATEWAYD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
) / "troika"  # fmt: skip


@pytest_asyncio.fixture
async def fake(fake_bluez: FakeBluez) -> AsyncIterator[FakeBluez]:
    """The shared fake bluetoothd (tests/emulator_fixtures.py), closing bleak's manager after."""
    yield fake_bluez
    await release_bleak_manager()


def pair_all(fleet: Fleet, state_dir: Path, skip: int = 0) -> DeviceRegistry:
    """Put the wearables (all but the last ``skip``) in the allowlist, as `gatewayd pair` does."""
    registry = DeviceRegistry.in_state_dir(state_dir)
    chosen = fleet.wearables[: len(fleet.wearables) - skip]
    for device, wearable in chosen:
        # Its numbering, as `gatewayd pair` records it: every window from then on is owed.
        info = decode_info(wearable.core.info())
        numbering = (info.boot_id, info.next_seq)
        registry.add(device.address, "wearable", wearable.core.spec.name, numbering=numbering)
    return registry


async def paired_fleet(
    fake: FakeBluez, recordings: list[Recording], setup: FleetSetup, state_dir: Path, skip: int = 0
) -> tuple[Fleet, list[PairedDevice]]:
    """The fleet added to ``fake``, all wearables but the last ``skip`` paired (`pair_all`)."""
    fleet = await build_fleet(fake, recordings, setup)
    registry = await asyncio.to_thread(pair_all, fleet, state_dir, skip)
    return fleet, await asyncio.to_thread(registry.load)


async def stream_until_complete(
    fleet: Fleet, manager: LinkManager, speed: float, limit_s: float
) -> tuple[dict[str, list[Message]], list[LinkEvent]]:
    """Run fleet and link until every wearable's last window has been delivered (or timeout)."""
    ids = {d.address: d.device_id for d in (link.device for link in manager.links.values())}
    expected = {
        ids[device.address]: wearable.core.windows_total
        for device, wearable in fleet.wearables
        if device.address in ids
    }
    frames: dict[str, list[Message]] = defaultdict(list)
    others: list[LinkEvent] = []
    deadline = time.monotonic() + limit_s
    async with running(fleet, speed):
        link_task = asyncio.create_task(manager.run())
        try:
            while any(len(frames[k]) < n for k, n in expected.items()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(manager.events.get(), remaining)
                except TimeoutError:
                    break
                if isinstance(event, FrameReceived):
                    frames[event.device_id].append(event.message)
                else:
                    others.append(event)
        finally:
            link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link_task
    return dict(frames), others


def without_resent(message: Message) -> Message:
    """The message as first produced (a retransmission differs only in the RESENT flag)."""
    # In int arithmetic: ~ of a MessageFlags member keeps only the named bits and would drop
    # motion_cg (bits 8-15).
    if isinstance(message, Window):
        flags = MessageFlags(int(message.summary.flags) & ~int(MessageFlags.RESENT))
        return replace(message, summary=replace(message.summary, flags=flags))
    return replace(message, flags=MessageFlags(int(message.flags) & ~int(MessageFlags.RESENT)))


def assert_exactly_once_in_order(
    fleet: Fleet, frames: dict[str, list[Message]], manager: LinkManager
) -> None:
    by_address = {link.device.address: link.device.device_id for link in manager.links.values()}
    for device, wearable in fleet.wearables:
        if device.address not in by_address:
            continue
        got = frames.get(by_address[device.address], [])
        sent = wearable.core.sent
        assert sent is not None
        assert [m.seq for m in got] == list(range(len(sent))), (
            f"{device.address}: {len(got)} of {len(sent)} delivered"
        )
        for m in got:
            assert without_resent(m) == sent[m.seq], f"{device.address} seq {m.seq} differs"


def synthetic(subject: int, minutes: float) -> Recording:
    return generate_recording(subject, minutes, seed=subject)


def _data_char_calls(fake: FakeBluez, fleet: Fleet) -> set[str]:
    """The methods the gateway called on the wearables' data characteristics."""
    paths = {device.characteristic(DATA_CHAR_UUID).path for device, _ in fleet.wearables}
    return {c.member for c in fake.call_log if c.path in paths}


@pytest.mark.asyncio
async def test_two_wearables_paired_from_the_cli_stream_troika_and_dalia_exactly_once(
    fake: FakeBluez, private_bus: EmulatorEnv, tmp_path: Path
) -> None:
    # A synthetic subject written as a PPG-DaLiA pickle and read back through the DaLiA reader.
    pickle = await asyncio.to_thread(write_subject, tmp_path / "S1" / "S1.pkl", 1, 2.0, seed=1)
    dalia = await asyncio.to_thread(load_dalia, pickle, cache_dir=tmp_path / "cache")
    if (TROIKA / "DATA_01_TYPE01.mat").is_file():
        first = await asyncio.to_thread(load_troika, TROIKA / "DATA_01_TYPE01.mat")
    else:
        first = synthetic(2, 2.0)  # ../shared/data absent: a second synthetic subject instead
    setup = FleetSetup(devices=2, speed=40.0, keep_sent=True, tau_mbits=3500, min_conf_e4=5000)
    fleet = await build_fleet(fake, [first, dalia], setup)
    config = tmp_path / "gatewayd.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    paired = await run_gatewayd(
        "--config", str(config), "pair", "--all", "--scan-seconds", "1", env=private_bus
    )
    assert paired.returncode == 0, paired.stderr
    registry = DeviceRegistry.in_state_dir(tmp_path / "state")
    assert sorted(d.address for d in await asyncio.to_thread(registry.load)) == sorted(
        d.address for d, _ in fleet.wearables
    )
    manager = LinkManager(
        ["hci0"],
        5,
        await asyncio.to_thread(registry.load),
        LinkSettings(tau_mbits=3500, min_conf_e4=5000),
    )
    frames, events = await stream_until_complete(fleet, manager, setup.speed, limit_s=60)
    assert_exactly_once_in_order(fleet, frames, manager)
    data_calls = _data_char_calls(fake, fleet)
    assert "AcquireNotify" in data_calls
    assert "StartNotify" not in data_calls
    kinds = {type(m) for ms in frames.values() for m in ms}
    assert Window in kinds, "some windows must be offloaded (raw samples on the wire)"
    first = frames[manager.links[fleet.wearables[0][0].address].device.device_id]
    windows = [m for m in first if isinstance(m, Window)]
    assert windows
    assert windows[0].bvp.shape == (512,)
    assert windows[0].acc.shape == (256, 3)
    assert not [e for e in events if isinstance(e, MessagesLost)]
    assert fleet.decoy is not None
    assert not fleet.decoy.connected


@pytest.mark.asyncio
async def test_link_drops_and_corrupted_fragments_lose_nothing(
    fake: FakeBluez, tmp_path: Path
) -> None:
    faults = FaultPlan(drop_every_s=1.0, corrupt=0.01, duplicate=0.005)
    setup = FleetSetup(devices=2, speed=25.0, keep_sent=True, faults=faults, mtu=64,
                       tau_mbits=3400, min_conf_e4=5000)  # fmt: skip
    fleet = await build_fleet(fake, [synthetic(3, 2.0), synthetic(4, 2.0)], setup)
    registry = await asyncio.to_thread(pair_all, fleet, tmp_path)
    # StartNotify and D-Bus signals here ([ble] acquire_notify = false); the other tests take
    # the default, AcquireNotify's socket.
    settings = LinkSettings(tau_mbits=3400, min_conf_e4=5000, acquire_notify=False)
    manager = LinkManager(["hci0"], 5, await asyncio.to_thread(registry.load), settings)
    frames, events = await stream_until_complete(fleet, manager, setup.speed, limit_s=90)
    assert_exactly_once_in_order(fleet, frames, manager)
    links = list(manager.links.values())
    assert sum(link.connections for link in links) >= 4, "the links must really have dropped"
    rejected = sum(sum(link.stream.stats.rejected.values()) for link in links)
    assert rejected > 0, "corrupted fragments must be counted"
    assert sum(w.core.counters.resent for _, w in fleet.wearables) > 0, "gaps recovered by resend"
    assert not [e for e in events if isinstance(e, MessagesLost)]
    data_calls = _data_char_calls(fake, fleet)
    assert "StartNotify" in data_calls
    assert "AcquireNotify" not in data_calls


@pytest.mark.asyncio
async def test_the_resting_limit_reaches_the_wearable_and_old_firmware_refusing_it_streams_on(
    fake: FakeBluez, tmp_path: Path
) -> None:
    # Wearable 1 runs firmware from before SET_REST_LIMIT; the links drop, so both connect
    # several times and the old one refuses the command at every connect.
    faults = FaultPlan(old_firmware=1, drop_every_s=1.0)
    setup = FleetSetup(devices=2, speed=25.0, keep_sent=True, faults=faults)
    fleet = await build_fleet(fake, [synthetic(6, 1.5)], setup)
    registry = await asyncio.to_thread(pair_all, fleet, tmp_path)
    settings = LinkSettings(rest_limit_cbpm=12000)
    manager = LinkManager(["hci0"], 5, await asyncio.to_thread(registry.load), settings)
    with capture_logs() as logs:
        frames, events = await stream_until_complete(fleet, manager, setup.speed, limit_s=60)
    assert_exactly_once_in_order(fleet, frames, manager)
    assert not [e for e in events if isinstance(e, MessagesLost)]
    (old_device, old), (new_device, new) = fleet.wearables
    assert old.core.rest_limit_cbpm == 10000, "old firmware keeps its own limit"
    assert new.core.rest_limit_cbpm == 12000
    old_link, new_link = manager.links[old_device.address], manager.links[new_device.address]
    assert old_link.connections >= 2, "the link must really have dropped"
    assert old_link.stream.stats.rejected_commands >= old_link.connections
    assert new_link.stream.stats.rejected_commands == 0
    refused = [r for r in logs if "refused the resting limit" in r["event"]]
    assert [r["log_level"] for r in refused][:1] == ["warning"], "said once, at WARNING"
    assert all(r["log_level"] == "debug" for r in refused[1:])


@pytest.mark.asyncio
async def test_twenty_wearables_on_four_adapters_at_ten_times_real_time(
    fake: FakeBluez, tmp_path: Path
) -> None:
    recordings = [synthetic(10 + i, 1.0) for i in range(4)]
    setup = FleetSetup(devices=22, adapters=4, slots=5, speed=10.0, keep_sent=True)
    fleet, devices = await paired_fleet(fake, recordings, setup, tmp_path, 2)  # 2 in range unpaired
    assert len(devices) == 20
    manager = LinkManager([f"hci{i}" for i in range(4)], 5, devices, LinkSettings())
    frames, events = await stream_until_complete(fleet, manager, setup.speed, limit_s=90)
    assert_exactly_once_in_order(fleet, frames, manager)
    assert len(frames) == 20
    adapters = {e.adapter for e in events if isinstance(e, LinkUp)}
    assert adapters == {"hci0", "hci1", "hci2", "hci3"}
    connects = [c for c in fake.call_log if c.member in {"Connect", "Pair"}]
    never = {DECOY_ADDRESS.replace(":", "_")} | {
        d.address.replace(":", "_") for d, _ in fleet.wearables[-2:]
    }
    assert not [c for c in connects if any(n in c.path for n in never)]
    assert np.all([not d.connected for d, _ in fleet.wearables[-2:]])


#: Three wearables on one adapter of two slots: one waits for a slot.
BEYOND_THE_SLOTS = FleetSetup(devices=3, adapters=1, slots=2, speed=10.0, decoy=False)


async def beyond_the_slots(
    fake: FakeBluez, tmp_path: Path, subject: int, minutes: float
) -> tuple[Fleet, list[PairedDevice]]:
    """`BEYOND_THE_SLOTS`, all three paired, replaying synthetic subjects from ``subject``."""
    recordings = [synthetic(subject + i, minutes) for i in range(3)]
    return await paired_fleet(fake, recordings, BEYOND_THE_SLOTS, tmp_path)


async def collect_until(
    manager: LinkManager, seen: list[LinkEvent], done: Callable[[], bool], limit_s: float = 60
) -> None:
    """Take the manager's events into ``seen`` until ``done()`` (at most ``limit_s``)."""
    async with asyncio.timeout(limit_s):
        while not done():
            with contextlib.suppress(TimeoutError):
                seen.append(await asyncio.wait_for(manager.events.get(), 0.5))


def ups(seen: Sequence[LinkEvent]) -> set[str]:
    """The devices that came up among ``seen``."""
    return {e.device_id for e in seen if isinstance(e, LinkUp)}


@pytest.mark.asyncio
async def test_wearables_beyond_the_slots_wait_and_the_gateway_says_so_once(
    fake: FakeBluez, tmp_path: Path
) -> None:
    fleet, devices = await beyond_the_slots(fake, tmp_path, 30, 1.0)
    seen: list[LinkEvent] = []
    with capture_logs() as logs:
        async with (
            running(fleet, BEYOND_THE_SLOTS.speed),
            LinkManager(["hci0"], 2, devices, LinkSettings()) as manager,
        ):
            await collect_until(
                manager, seen, lambda: len(ups(seen)) >= 2 and manager.pool.waiting >= 1
            )
            await asyncio.sleep(2.0)  # advertisements go on: still one warning, no third link
            assert len(ups(seen)) == 2
            assert sum(d.connected for d, _ in fleet.wearables) == 2
            assert manager.pool.problem is not None
            assert manager.pool.problem.startswith(
                "1 device(s) wait for a connection slot, all 2 are taken"
            )
    warned = [e for e in logs if e["event"].startswith("every connection slot is taken")]
    assert len(warned) == 1, warned
    assert "[ble] adapters" in warned[0]["fix"]


@pytest.mark.asyncio
async def test_a_device_removed_frees_its_slot_and_one_renamed_goes_on_under_its_new_id(
    fake: FakeBluez, tmp_path: Path
) -> None:
    fleet, devices = await beyond_the_slots(fake, tmp_path, 40, 2.0)
    seen: list[LinkEvent] = []

    def frames(device_id: str) -> int:
        return sum(isinstance(e, FrameReceived) and e.device_id == device_id for e in seen)

    async with (
        running(fleet, BEYOND_THE_SLOTS.speed),
        LinkManager(["hci0"], 2, devices, LinkSettings()) as manager,
    ):
        await collect_until(
            manager, seen, lambda: len(ups(seen)) == 2 and manager.pool.waiting == 1
        )
        first, second = sorted(ups(seen))
        (waiting,) = {d.device_id for d in devices} - {first, second}
        await collect_until(manager, seen, lambda: frames(second) >= 3)
        kept = [d for d in devices if d.device_id != first]
        renamed = [replace(d, device_id="renamed") if d.device_id == second else d for d in kept]
        change = await manager.update_devices(renamed)
        assert (change.removed, change.renamed) == ([first], [(second, "renamed")])
        await collect_until(manager, seen, lambda: waiting in ups(seen) and frames("renamed") >= 3)
        assert {d.device_id for d in manager.devices} == {waiting, "renamed"}
    for old in (first, second):
        mine = [e for e in seen if e.device_id == old]
        # Its last events: the link down, then the removal; nothing after.
        assert isinstance(mine[-2], LinkDown)
        assert mine[-1] == DeviceRemoved(old, None if old == first else "renamed")
    seqs: dict[str, list[int]] = defaultdict(list)
    for e in seen:
        if isinstance(e, FrameReceived):
            seqs[e.device_id].append(e.message.seq)
    assert seqs[second], "it streamed under its old id"
    assert seqs["renamed"][0] == seqs[second][-1] + 1, "the numbering goes on, nothing lost"


@pytest.mark.asyncio
async def test_heart_rate_strap_and_clock_sync_and_a_flooding_neighbour(
    fake: FakeBluez, tmp_path: Path
) -> None:
    # Wearable 1 floods junk fragments; wearable 2 starts an hour off until the gateway syncs
    # it (the skew applies to every device); a standard heart-rate strap streams alongside.
    faults = FaultPlan(flood=1, flood_rate=100.0, skew_s=-3600.0)
    setup = FleetSetup(devices=2, heart_rate_straps=1, speed=20.0, keep_sent=True, faults=faults)
    fleet = await build_fleet(fake, [synthetic(5, 1.0)], setup)
    registry = await asyncio.to_thread(pair_all, fleet, tmp_path)
    strap_device, strap = fleet.straps[0]
    await asyncio.to_thread(registry.add, strap_device.address, "heart_rate", "HR strap 1", "strap")
    manager = LinkManager(["hci0"], 5, await asyncio.to_thread(registry.load), LinkSettings())
    started_ms = time.time() * 1000
    frames, events = await stream_until_complete(fleet, manager, setup.speed, limit_s=60)
    assert_exactly_once_in_order(fleet, frames, manager)
    flooded = manager.links[fleet.wearables[0][0].address].stream.stats.rejected
    assert sum(flooded.values()) > 10, "the junk must be seen and counted"
    summaries = [summary_of(m) for ms in frames.values() for m in ms]
    synced = [s for s in summaries if s.flags & MessageFlags.CLOCK_SYNCED]
    assert synced, "the gateway must have synchronised the device clocks"
    for s in synced:  # within the simulated minute of the sync, not an hour off
        assert abs(s.t_ms - started_ms) < 5 * 60_000
    beats = [e for e in events if isinstance(e, HeartRateReceived)]
    assert 0 < len(beats) <= strap.sent
    assert all(e.device_id == "strap" for e in beats)
    assert {e.measurement.hr_bpm for e in beats} <= set(range(30, 250))


# ---- a link left behind by a gateway that died --------------------------------------------------


async def bluez_call(bus: MessageBus, path: str, interface: str, member: str) -> None:
    reply = await bus.call(
        DBusMessage(destination="org.bluez", path=path, interface=interface, member=member)
    )
    assert reply is not None
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body


async def connect_and_die(device: FakeDevice) -> str:
    """What a SIGKILLed gateway leaves: a D-Bus client connects, subscribes and vanishes.

    Returns the vanished client's unique name, once the emulator has seen it go.
    """
    await device.ensure_exported()  # as the dead gateway's scan did
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    name = bus.unique_name
    assert name is not None
    await bluez_call(bus, device.path, "org.bluez.Device1", "Connect")
    data = device.characteristic(DATA_CHAR_UUID).path
    await bluez_call(bus, data, "org.bluez.GattCharacteristic1", "StartNotify")
    assert device.notifying(DATA_CHAR_UUID)
    bus.disconnect()
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 10
    while device.notifying(DATA_CHAR_UUID):  # bluetoothd ends the client's notify session...
        assert time.monotonic() < deadline, "the emulator never saw the client leave"
        await asyncio.sleep(0.01)
    return name


@pytest.mark.asyncio
async def test_the_emulator_keeps_a_link_its_client_left_as_bluetoothd_does(
    fake: FakeBluez,
) -> None:
    # bluetoothd owns the LE link, not the D-Bus client that asked for it (bluez/bluez#89): the
    # link stays up and silent, bleak's BleakAdapter (3.1) lists it, and any client may end it.
    fleet = await build_fleet(fake, [synthetic(6, 0.5)], FleetSetup(devices=1))
    device, _ = fleet.wearables[0]
    await connect_and_die(device)
    assert device.connected  # ...and keeps the link
    adapter = await BleakAdapter.get(bluez={"adapter": "hci0"})
    (listed,) = await adapter.get_connected_devices([SERVICE_UUID])
    assert (listed.address, listed.details["path"]) == (device.address, device.path)
    other = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        await bluez_call(other, device.path, "org.bluez.Device1", "Disconnect")
    finally:
        other.disconnect()
    assert device.link_state == "idle"  # not `not device.connected`: mypy narrowed it
    assert await adapter.get_connected_devices([SERVICE_UUID]) == []


@pytest.mark.asyncio
async def test_a_link_left_by_a_dead_gateway_is_taken_over_without_an_advertisement(
    fake: FakeBluez, tmp_path: Path
) -> None:
    setup = FleetSetup(devices=1, speed=20.0, keep_sent=True)
    fleet = await build_fleet(fake, [synthetic(7, 1.0)], setup)
    registry = await asyncio.to_thread(pair_all, fleet, tmp_path)
    device, _ = fleet.wearables[0]
    dead = await connect_and_die(device)
    manager = LinkManager(["hci0"], 5, await asyncio.to_thread(registry.load), LinkSettings())
    frames, _ = await stream_until_complete(fleet, manager, setup.speed, limit_s=60)
    assert_exactly_once_in_order(fleet, frames, manager)
    assert manager.links[device.address].connections == 1
    # bleak saw Connected=True and skipped Device1.Connect: the dead client's link was used.
    connects = [c for c in fake.call_log if c.member in {"Connect", "Pair"} and c.sender != dead]
    assert connects == []
