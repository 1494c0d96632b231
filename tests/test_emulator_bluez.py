"""The fake BlueZ, driven through real, unmodified bleak on a private dbus-daemon.

Every test gets its own dbus-daemon, its own FakeBluez and its own event loop, hence its own
bleak BlueZ manager (bleak keeps one per loop in ``manager._global_instances``); the fixture
closes that manager's bus before the daemon goes, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import (
    BleakDBusError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from gatewayd.emulator import (
    ABORT_BY_LOCAL,
    CONNECTION_LIMIT,
    BluezError,
    DisconnectReason,
    EmulatorError,
    FakeAdapter,
    FakeBluez,
    FakeDevice,
    GattError,
    PrivateBus,
    StaticPeripheral,
    battery_service,
    wearable_service,
)
from gatewayd.emulator.bluez_specs import ATT_ERROR_WRITE_NOT_PERMITTED
from gatewayd.protocol import gatt
from tests.emulator_fixtures import bluetoothctl_shim, release_bleak_manager

__all__ = ["bluetoothctl_shim"]  # the shared fixture, used by bus_address below

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed (apt-get install dbus)"
)

WEARABLE = "C0:FF:EE:00:00:01"
DECOY = "C0:FF:EE:00:00:99"
INFO = b"gatewayd/1 fw=0.1.0 model=mnv2-p40"
HEART_RATE_SERVICE = "0000180d-0000-1000-8000-00805f9b34fb"
TIMEOUT = 5.0


def wearable_peripheral() -> StaticPeripheral:
    return StaticPeripheral({gatt.INFO_CHAR_UUID: INFO, gatt.BATTERY_LEVEL_CHAR_UUID: b"\x57"})


@pytest_asyncio.fixture
async def bus_address(
    monkeypatch: pytest.MonkeyPatch, bluetoothctl_shim: Path
) -> AsyncIterator[str]:
    async with PrivateBus() as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        try:
            yield address
        finally:
            await release_bleak_manager()


@pytest_asyncio.fixture
async def fake(bus_address: str) -> AsyncIterator[FakeBluez]:
    async with FakeBluez(bus_address, report_interval=0.05, seed=7) as emulator:
        yield emulator
        await release_bleak_manager()


@pytest_asyncio.fixture
async def hci0(fake: FakeBluez) -> FakeAdapter:
    return await fake.add_adapter("hci0", "00:1A:7D:DA:71:01")


@pytest_asyncio.fixture
async def wearable(fake: FakeBluez, hci0: FakeAdapter) -> FakeDevice:
    return await fake.add_device(
        hci0,
        WEARABLE,
        "wearable-01",
        [gatt.SERVICE_UUID],
        [wearable_service(), battery_service()],
        peripheral=wearable_peripheral(),
    )


@pytest_asyncio.fixture
async def decoy(fake: FakeBluez, hci0: FakeAdapter) -> FakeDevice:
    # A heart-rate strap next to the wearable: advertises another service.
    return await fake.add_device(hci0, DECOY, "strap", [HEART_RATE_SERVICE])


async def find(address: str) -> BLEDevice:
    device = await BleakScanner.find_device_by_address(address, timeout=TIMEOUT)
    assert device is not None, f"{address} not found"
    return device


def peripheral_of(device: FakeDevice) -> StaticPeripheral:
    assert isinstance(device.peripheral, StaticPeripheral)
    return device.peripheral


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for emulator state that has no event of its own (it changes on bus traffic)."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - brief polling of test-visible state
            await asyncio.sleep(0.01)


def calls(fake: FakeBluez, member: str, path: str | None = None) -> int:
    return sum(1 for c in fake.call_log if c.member == member and (path is None or c.path == path))


class _Receiver:
    """A notification callback expecting ``count`` distinct 244-byte payloads (``payloads``):
    keeps what arrives in ``received`` and sets ``all_in`` at the last."""

    def __init__(self, count: int) -> None:
        self.payloads = [i.to_bytes(4, "little") + bytes([i % 251]) * 240 for i in range(count)]
        self.received: list[bytes] = []
        self.all_in = asyncio.Event()

    def __call__(self, _char: object, data: bytearray) -> None:
        self.received.append(bytes(data))
        if len(self.received) == len(self.payloads):
            self.all_in.set()


# --- the private bus ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_private_bus_starts_stops_and_refuses_reentry() -> None:
    bus = PrivateBus()
    async with bus as address:
        assert address.startswith("unix:path=")
        assert bus.environ() == {"DBUS_SYSTEM_BUS_ADDRESS": address}
        pid = bus.pid
        assert pid is not None
        os.kill(pid, 0)  # alive
        with pytest.raises(EmulatorError, match="only once"):
            await bus.__aenter__()
        async with PrivateBus(address) as joined:  # joining starts nothing
            assert joined == address
    assert bus.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.asyncio
async def test_private_bus_is_stopped_when_the_body_fails() -> None:
    bus = PrivateBus()
    seen: list[tuple[int | None, Path | None]] = []

    async def failing_body() -> None:
        async with bus:
            seen.append((bus.pid, bus.directory))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_body()
    [(pid, directory)] = seen
    assert pid is not None
    assert directory is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not directory.exists()


@pytest.mark.asyncio
async def test_second_fake_bluez_cannot_own_the_name(fake: FakeBluez) -> None:
    with pytest.raises(EmulatorError, match="already owned"):
        async with FakeBluez(fake.address):
            pass


# --- scanning ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_scan_with_service_filter_finds_the_wearable_not_the_decoy(
    fake: FakeBluez, wearable: FakeDevice, decoy: FakeDevice
) -> None:
    found = await BleakScanner.discover(
        timeout=0.4, service_uuids=[gatt.SERVICE_UUID], return_adv=True
    )
    assert set(found) == {WEARABLE}
    device, adv = found[WEARABLE]
    assert device.name == "wearable-01"
    assert adv.service_uuids == [gatt.SERVICE_UUID]
    assert -66 <= adv.rssi <= -54  # jitter around -60

    # The decoy is there: an unfiltered scan sees it, so it was the filter that excluded it.
    everything = await BleakScanner.discover(timeout=0.4, return_adv=True)
    assert set(everything) == {WEARABLE, DECOY}
    assert calls(fake, "SetDiscoveryFilter") >= 2
    assert not fake.adapters["hci0"].discovering


@pytest.mark.asyncio
async def test_advertisement_data_reaches_bleak(fake: FakeBluez, hci0: FakeAdapter) -> None:
    await fake.add_device(
        hci0,
        WEARABLE,
        None,  # no name: bluetoothd has no Name property, bleak reports None
        [gatt.SERVICE_UUID],
        manufacturer_data={0xFFFF: b"\x01\x02"},
        service_data={gatt.SERVICE_UUID: b"\x07"},
        tx_power=4,
        address_type="random",
    )
    found = await BleakScanner.discover(timeout=0.3, return_adv=True)
    device, adv = found[WEARABLE]
    assert device.name is None
    assert adv.local_name is None
    assert adv.manufacturer_data == {0xFFFF: b"\x01\x02"}
    assert adv.service_data == {gatt.SERVICE_UUID: b"\x07"}
    assert adv.tx_power == 4


@pytest.mark.asyncio
async def test_rssi_keeps_changing_while_discovering(fake: FakeBluez, wearable: FakeDevice) -> None:
    readings: list[int] = []
    async with BleakScanner(
        lambda device, adv: readings.append(adv.rssi), service_uuids=[gatt.SERVICE_UUID]
    ):
        await wait_until(lambda: len(readings) >= 5)
    assert len(set(readings)) > 1


@pytest.mark.asyncio
async def test_two_scans_from_one_process_collide_like_bluez(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    # bluetoothd allows one discovery session per D-Bus client, and bleak shares one connection
    # per process: a second concurrent scanner fails (bluez src/adapter.c start_discovery).
    async with BleakScanner():
        with pytest.raises(BleakDBusError) as caught:
            async with BleakScanner():
                pass
    assert caught.value.dbus_error == BluezError.IN_PROGRESS


# --- connect, GATT, notifications ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_connect_read_write_and_1000_notifications_in_order(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    await wearable.load_bond()  # its characteristics need a link encrypted with a bond
    peripheral = peripheral_of(wearable)
    on_notify = _Receiver(1000)
    payloads, received, all_in = on_notify.payloads, on_notify.received, on_notify.all_in

    async with BleakClient(await find(WEARABLE)) as client:
        assert wearable.connected
        assert await client.read_gatt_char(gatt.INFO_CHAR_UUID) == INFO
        await client.write_gatt_char(gatt.CONTROL_CHAR_UUID, b"\x01\x02\x03", response=True)
        assert peripheral.writes == [(gatt.CONTROL_CHAR_UUID, b"\x01\x02\x03")]

        data_char = client.services.get_characteristic(gatt.DATA_CHAR_UUID)
        assert data_char is not None
        assert data_char.max_write_without_response_size == 247 - 3  # the MTU property
        await client.start_notify(data_char, on_notify)
        assert wearable.notifying(gatt.DATA_CHAR_UUID)
        # Battery Level too: bluetoothd's battery plugin subscribes to it on connect.
        assert peripheral.notify_enabled == {gatt.DATA_CHAR_UUID, gatt.BATTERY_LEVEL_CHAR_UUID}
        for payload in payloads:
            assert await wearable.notify(gatt.DATA_CHAR_UUID, payload)
        async with asyncio.timeout(TIMEOUT):
            await all_in.wait()
        assert received == payloads

        await client.stop_notify(data_char)
        assert not wearable.notifying(gatt.DATA_CHAR_UUID)
        assert not await wearable.notify(gatt.DATA_CHAR_UUID, b"x")  # nobody listens
    assert not wearable.connected
    assert peripheral.events == ["connect", "disconnect:local"]


@pytest.mark.asyncio
async def test_acquire_notify_sends_notifications_over_a_socket_not_dbus(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    await wearable.load_bond()
    peripheral = peripheral_of(wearable)
    data = wearable.characteristic(gatt.DATA_CHAR_UUID)
    on_notify = _Receiver(1000)
    payloads, received, all_in = on_notify.payloads, on_notify.received, on_notify.all_in

    async with BleakClient(await find(WEARABLE)) as client:
        data_char = client.services.get_characteristic(gatt.DATA_CHAR_UUID)
        assert data_char is not None
        assert data_char.obj[1]["NotifyAcquired"] is False  # bluetoothd exports it with notify
        control = client.services.get_characteristic(gatt.CONTROL_CHAR_UUID)
        assert control is not None
        assert "NotifyAcquired" not in control.obj[1]
        await client.start_notify(data_char, on_notify, bluez={"use_start_notify": False})
        assert calls(fake, "AcquireNotify", data.path) == 1
        assert calls(fake, "StartNotify", data.path) == 0
        assert wearable.notifying(gatt.DATA_CHAR_UUID)
        assert gatt.DATA_CHAR_UUID in peripheral.notify_enabled  # the CCCD was written
        assert data.interface is not None
        assert data.interface.NotifyAcquired
        for payload in payloads:
            assert await wearable.notify(gatt.DATA_CHAR_UUID, payload)
            await asyncio.sleep(0)  # bleak reads one datagram per loop turn, in this loop
        async with asyncio.timeout(TIMEOUT):
            await all_in.wait()
        assert received == payloads
        assert data.value == b""  # the Value property is not touched while acquired
        assert fake.notifications_dropped == 0

        await client.stop_notify(data_char)  # bleak closes its end: bluetoothd sees a hang-up
        await wait_until(lambda: not wearable.notifying(gatt.DATA_CHAR_UUID))
        assert data.notify_socket is None
        assert gatt.DATA_CHAR_UUID not in peripheral.notify_enabled
        assert not await wearable.notify(gatt.DATA_CHAR_UUID, b"x")  # nobody listens
        # Released, StartNotify works again.
        await client.start_notify(data_char, on_notify)
        assert wearable.notifying(gatt.DATA_CHAR_UUID)


async def _acquire(bus: MessageBus, path: str) -> Message:
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path=path,
            interface="org.bluez.GattCharacteristic1",
            member="AcquireNotify",
            signature="a{sv}",
            body=[{}],
        )
    )
    assert reply is not None
    return reply


@pytest.mark.asyncio
async def test_acquire_notify_errors_drops_and_hangups_follow_bluetoothd(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    await wearable.load_bond()
    data = wearable.characteristic(gatt.DATA_CHAR_UUID)
    control = wearable.characteristic(gatt.CONTROL_CHAR_UUID)
    bus = await MessageBus(bus_address=fake.address, negotiate_unix_fd=True).connect()
    lost = asyncio.Event()
    client = BleakClient(await find(WEARABLE), disconnected_callback=lambda _c: lost.set())
    try:
        await client.connect()
        # A StartNotify session holds the characteristic: InProgress.
        await client.start_notify(gatt.DATA_CHAR_UUID, lambda _c, _d: None)
        reply = await _acquire(bus, data.path)
        assert reply.error_name == BluezError.IN_PROGRESS
        await client.stop_notify(gatt.DATA_CHAR_UUID)
        # No notify flag: NotSupported.
        assert (await _acquire(bus, control.path)).error_name == BluezError.NOT_SUPPORTED

        reply = await _acquire(bus, data.path)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        assert reply.signature == "hq"
        index, mtu = reply.body
        assert mtu == wearable.mtu
        fd = reply.unix_fds[index]
        sock = socket.socket(fileno=fd)
        assert sock.type == socket.SOCK_SEQPACKET
        # Held: a second AcquireNotify and StartNotify are refused.
        again = await _acquire(bus, data.path)
        assert (again.error_name, again.body) == (BluezError.NOT_PERMITTED, ["Notify acquired"])
        with pytest.raises(BleakDBusError, match="Notify acquired"):
            await client.start_notify(gatt.DATA_CHAR_UUID, lambda _c, _d: None)

        # Nobody reads: once the socket is full, notifications are dropped and counted.
        sent = 0
        while await wearable.notify(gatt.DATA_CHAR_UUID, sent.to_bytes(4, "little") * 61):
            sent += 1
        assert sent > 10
        assert fake.notifications_dropped == 1
        sock.setblocking(False)
        first = [int.from_bytes(sock.recv(1024)[:4], "little") for _ in range(sent)]
        assert first == list(range(sent))  # every datagram that was sent, in order

        # The link drops: bluetoothd closes its end, the client reads end-of-file.
        await wearable.drop_link()
        async with asyncio.timeout(TIMEOUT):
            await lost.wait()
        sock.setblocking(True)
        assert sock.recv(1024) == b""
        assert data.notify_socket is None
        sock.close()
    finally:
        await client.disconnect()
        bus.disconnect()
        await bus.wait_for_disconnect()


@pytest.mark.asyncio
async def test_acquire_notify_ends_when_the_client_leaves_the_bus(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    await wearable.load_bond()
    data = wearable.characteristic(gatt.DATA_CHAR_UUID)
    async with BleakClient(await find(WEARABLE)):
        bus = await MessageBus(bus_address=fake.address, negotiate_unix_fd=True).connect()
        reply = await _acquire(bus, data.path)
        fd = reply.unix_fds[reply.body[0]]
        assert wearable.notifying(gatt.DATA_CHAR_UUID)
        bus.disconnect()
        await bus.wait_for_disconnect()
        os.close(fd)  # the process that held it is gone
        await wait_until(lambda: not wearable.notifying(gatt.DATA_CHAR_UUID))
        assert gatt.DATA_CHAR_UUID not in peripheral_of(wearable).notify_enabled


@pytest.mark.asyncio
async def test_acquire_notify_sockets_close_when_the_emulator_exits(bus_address: str) -> None:
    # No socket is left for the garbage collector (a ResourceWarning in a later test).
    async with FakeBluez(bus_address, report_interval=0.05, seed=7) as fake:
        hci0 = await fake.add_adapter("hci0", "00:1A:7D:DA:71:01")
        wearable = await fake.add_device(
            hci0, WEARABLE, "wearable-01", [gatt.SERVICE_UUID], [wearable_service()],
            peripheral=wearable_peripheral(),
        )  # fmt: skip
        await wearable.load_bond()
        data = wearable.characteristic(gatt.DATA_CHAR_UUID)
        bus = await MessageBus(bus_address=fake.address, negotiate_unix_fd=True).connect()
        connect = Message(
            destination="org.bluez",
            path=wearable.path,
            interface="org.bluez.Device1",
            member="Connect",
        )
        connected = await bus.call(connect)
        assert connected is not None
        assert connected.message_type is MessageType.METHOD_RETURN, connected.body
        await wait_until(lambda: data.interface is not None)
        reply = await _acquire(bus, data.path)
        sock = socket.socket(fileno=reply.unix_fds[reply.body[0]])
        assert data.notify_socket is not None
        emulators_end = data.notify_socket
    try:
        assert data.notify_socket is None
        assert emulators_end.fileno() == -1  # closed, not left to the collector
        sock.settimeout(TIMEOUT)
        assert sock.recv(1024) == b""
    finally:
        sock.close()
        bus.disconnect()
        await bus.wait_for_disconnect()


@pytest.mark.asyncio
async def test_notification_larger_than_the_mtu_is_refused(
    fake: FakeBluez, hci0: FakeAdapter
) -> None:
    device = await fake.add_device(
        hci0, WEARABLE, "w", [gatt.SERVICE_UUID], [wearable_service()], mtu=23
    )
    with pytest.raises(ValueError, match="ATT MTU 23"):
        await device.notify(gatt.DATA_CHAR_UUID, bytes(21))
    assert not await device.notify(gatt.DATA_CHAR_UUID, bytes(20))  # fits, but no link


@pytest.mark.asyncio
async def test_gatt_objects_follow_bluez_paths_and_the_battery_plugin(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    async with BleakClient(await find(WEARABLE)) as client:
        service = client.services.get_service(gatt.SERVICE_UUID)
        assert service is not None
        assert service.obj[0] == f"{wearable.path}/service{service.handle:04x}"
        for char in service.characteristics:
            assert char.obj[0] == f"{service.obj[0]}/char{char.handle:04x}"
        data_char = service.get_characteristic(gatt.DATA_CHAR_UUID)
        assert data_char is not None
        assert [d.uuid for d in data_char.descriptors] == ["00002902-0000-1000-8000-00805f9b34fb"]
        # Stock bluetoothd's battery plugin claims the Battery Service: not in GATT, but
        # org.bluez.Battery1 on the device instead.
        assert client.services.get_service(gatt.BATTERY_SERVICE_UUID) is None
        assert await get_property(wearable.path, "org.bluez.Battery1", "Percentage") == 0x57
        assert wearable.notifying(gatt.BATTERY_LEVEL_CHAR_UUID)  # the plugin subscribes
        assert await wearable.notify(gatt.BATTERY_LEVEL_CHAR_UUID, b"\x50")
        await wait_until(lambda: wearable.battery_percentage == 0x50)
        # UUIDs now lists the discovered services too, hidden ones included.
        uuids = await get_property(wearable.path, "org.bluez.Device1", "UUIDs")
        assert gatt.BATTERY_SERVICE_UUID in uuids


@pytest.mark.asyncio
async def test_without_the_battery_plugin_the_battery_service_is_plain_gatt(
    bus_address: str,
) -> None:
    async with FakeBluez(bus_address, report_interval=0.05, battery_plugin=False) as fake:
        hci0 = await fake.add_adapter("hci0", "00:1A:7D:DA:71:01")
        await fake.add_device(
            hci0,
            WEARABLE,
            "wearable-01",
            [gatt.SERVICE_UUID],
            [wearable_service(), battery_service()],
            peripheral=wearable_peripheral(),
        )
        async with BleakClient(await find(WEARABLE)) as client:
            level = await client.read_gatt_char(gatt.BATTERY_LEVEL_CHAR_UUID)
            assert level == b"\x57"
        await release_bleak_manager()


@pytest.mark.asyncio
async def test_gatt_errors_reach_bleak_as_bluez_reports_them(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    await wearable.load_bond()  # its characteristics need a link encrypted with a bond

    class Refusing(StaticPeripheral):
        def on_write(self, char_uuid: str, data: bytes) -> None:
            raise GattError(ATT_ERROR_WRITE_NOT_PERMITTED)

    wearable.peripheral = Refusing({gatt.INFO_CHAR_UUID: INFO})
    async with BleakClient(await find(WEARABLE)) as client:
        with pytest.raises(BleakGATTProtocolError) as refused:
            await client.write_gatt_char(gatt.CONTROL_CHAR_UUID, b"\x00", response=True)
        assert refused.value.code is BleakGATTProtocolErrorCode.WRITE_NOT_PERMITTED
        with pytest.raises(BleakGATTProtocolError) as unreadable:
            await client.read_gatt_char(gatt.DATA_CHAR_UUID)  # notify only
        assert unreadable.value.code is BleakGATTProtocolErrorCode.READ_NOT_PERMITTED


# --- pairing -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pair_true_calls_pair_not_connect_and_stays_connected(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    async with BleakClient(await find(WEARABLE), pair=True) as client:
        assert client.is_connected
        assert wearable.connected
        assert (wearable.paired, wearable.bonded, wearable.trusted) == (True, True, True)
        assert calls(fake, "Pair", wearable.path) == 1
        assert calls(fake, "Connect", wearable.path) == 0
        assert await client.read_gatt_char(gatt.INFO_CHAR_UUID) == INFO
    # Paired devices are not temporary: they stay on D-Bus after disconnecting.
    assert wearable.exported
    assert not wearable.temporary


@pytest.mark.asyncio
async def test_failed_pairing_leaves_the_link_up(fake: FakeBluez, wearable: FakeDevice) -> None:
    wearable.fail_next_pairs(1)
    with pytest.raises(BleakDBusError) as caught:
        await BleakClient(await find(WEARABLE), pair=True).connect()
    assert caught.value.dbus_error == BluezError.AUTHENTICATION_FAILED
    # bleak disconnects after a failed connect(); the emulator saw the whole sequence.
    await wait_until(lambda: not wearable.connected)
    assert not wearable.paired
    assert calls(fake, "Disconnect", wearable.path) == 1


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_drop_link_fires_disconnected_callback_and_reconnect_works(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    await wearable.load_bond()  # its characteristics need a link encrypted with a bond
    peripheral = peripheral_of(wearable)
    lost = asyncio.Event()
    device = await find(WEARABLE)
    client = BleakClient(device, disconnected_callback=lambda _client: lost.set())
    await client.connect()
    await client.start_notify(gatt.DATA_CHAR_UUID, lambda _c, _d: None)

    await wearable.drop_link()
    async with asyncio.timeout(TIMEOUT):
        await lost.wait()
    assert not client.is_connected
    assert not wearable.connected
    assert not wearable.services_resolved
    assert all(s.interface is None for s in wearable.services)  # GATT objects removed
    assert not wearable.notifying(gatt.DATA_CHAR_UUID)
    assert peripheral.events[-1] == f"disconnect:{DisconnectReason.TIMEOUT}"
    await client.disconnect()  # releases bleak's per-connection bus

    # A new client, as a reconnect loop makes; the device object is still there.
    async with BleakClient(device) as again:
        assert await again.read_gatt_char(gatt.INFO_CHAR_UUID) == INFO
        assert wearable.connected


@pytest.mark.asyncio
async def test_connect_beyond_the_slot_limit_fails_like_the_controller(
    fake: FakeBluez, hci0: FakeAdapter
) -> None:
    assert hci0.slots == 5
    devices = [
        await fake.add_device(hci0, f"C0:FF:EE:00:01:{i:02X}", f"w{i}", [gatt.SERVICE_UUID])
        for i in range(6)
    ]
    found = await BleakScanner.discover(timeout=0.3, service_uuids=[gatt.SERVICE_UUID])
    by_address = {d.address: d for d in found}
    clients = [BleakClient(by_address[d.address]) for d in devices]
    try:
        for client in clients[:5]:
            await client.connect()
        assert hci0.busy_slots == 5
        with pytest.raises(BleakDBusError) as caught:
            await clients[5].connect()
        assert caught.value.dbus_error == BluezError.FAILED
        assert caught.value.dbus_error_details == CONNECTION_LIMIT
        assert not devices[5].connected

        await clients[0].disconnect()  # a slot frees up
        await clients[5].connect()
        assert devices[5].connected
    finally:
        for client in clients:
            await client.disconnect()


@pytest.mark.asyncio
async def test_fail_next_connects_raises_the_bluez_error_in_bleak(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    device = await find(WEARABLE)
    wearable.fail_next_connects(1, BluezError.IN_PROGRESS)
    with pytest.raises(BleakDBusError) as caught:
        await BleakClient(device).connect()
    assert caught.value.dbus_error == "org.bluez.Error.InProgress"
    assert not wearable.connected

    wearable.fail_next_connects(1, BluezError.FAILED, "le-connection-timeout")
    with pytest.raises(BleakDBusError) as caught:
        await BleakClient(device).connect()
    assert caught.value.dbus_error_details == "le-connection-timeout"

    async with BleakClient(device) as client:  # faults used up
        assert client.is_connected


@pytest.mark.asyncio
async def test_abort_by_local_is_retried_by_bleak_itself(
    fake: FakeBluez, wearable: FakeDevice
) -> None:
    device = await find(WEARABLE)
    wearable.fail_next_connects(1, BluezError.FAILED, ABORT_BY_LOCAL)
    async with BleakClient(device) as client:
        assert client.is_connected
    assert calls(fake, "Connect", wearable.path) == 2


@pytest.mark.asyncio
async def test_forgotten_device_is_not_found_by_bleak(bus_address: str) -> None:
    # bluetoothd forgets unpaired, untrusted devices TemporaryTimeout after they were last seen;
    # a BLEDevice from an old scan is then useless, the gateway has to scan again.
    async with FakeBluez(bus_address, report_interval=0.05, temporary_timeout=0.2) as fake:
        hci0 = await fake.add_adapter("hci0", "00:1A:7D:DA:71:01")
        wearable = await fake.add_device(hci0, WEARABLE, "w", [gatt.SERVICE_UUID])
        device = await find(WEARABLE)
        await wait_until(lambda: not wearable.exported)
        with pytest.raises(BleakError, match="not found"):
            await BleakClient(device).connect()
        await find(WEARABLE)  # a new scan discovers it again
        assert wearable.exported
        await release_bleak_manager()


@pytest.mark.asyncio
async def test_remove_device_takes_it_away(fake: FakeBluez, wearable: FakeDevice) -> None:
    lost = asyncio.Event()
    client = BleakClient(await find(WEARABLE), disconnected_callback=lambda _c: lost.set())
    await client.connect()
    await fake.remove_device(wearable)
    async with asyncio.timeout(TIMEOUT):
        await lost.wait()
    await client.disconnect()
    assert WEARABLE not in fake.adapters["hci0"].devices
    assert await BleakScanner.find_device_by_address(WEARABLE, timeout=0.3) is None


# --- several adapters --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_second_adapter_is_used_with_bleaks_adapter_argument(
    fake: FakeBluez, hci0: FakeAdapter
) -> None:
    hci1 = await fake.add_adapter("hci1", "00:1A:7D:DA:71:02", slots=1)
    on_hci0 = await fake.add_device(hci0, WEARABLE, "near-0", [gatt.SERVICE_UUID])
    on_hci1 = await fake.add_device(
        hci1,
        "C0:FF:EE:00:00:02",
        "near-1",
        [gatt.SERVICE_UUID],
        [wearable_service()],
        peripheral=wearable_peripheral(),
        paired=True,
    )
    found = await BleakScanner.discover(timeout=0.3, bluez={"adapter": "hci1"})
    assert {d.address for d in found} == {on_hci1.address}

    # By address: bleak scans on hci1 by itself, then connects there.
    async with BleakClient(on_hci1.address, bluez={"adapter": "hci1"}, timeout=TIMEOUT) as client:
        assert await client.read_gatt_char(gatt.INFO_CHAR_UUID) == INFO
        assert (hci0.busy_slots, hci1.busy_slots) == (0, 1)
    assert not on_hci0.exported  # nobody scanned on hci0


# --- the D-Bus surface outside bleak --------------------------------------------------------------


async def get_property(path: str, interface: str, name: str) -> object:
    bus = await MessageBus(bus_address=os.environ["DBUS_SYSTEM_BUS_ADDRESS"]).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path=path,
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[interface, name],
            )
        )
        assert reply is not None
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body[0].value
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()


@pytest.mark.asyncio
async def test_object_manager_signals_come_from_root_and_sessions_end_with_the_client(
    fake: FakeBluez, hci0: FakeAdapter, wearable: FakeDevice
) -> None:
    signals: list[tuple[str, str]] = []
    bus = await MessageBus(bus_address=fake.address).connect()
    try:

        def record(message: Message) -> None:
            if message.message_type is MessageType.SIGNAL and message.member in (
                "InterfacesAdded",
                "InterfacesRemoved",
            ):
                signals.append((message.path or "", message.member or ""))

        bus.add_message_handler(record)
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',interface='org.freedesktop.DBus.ObjectManager'"],
            )
        )
        start = Message(
            destination="org.bluez",
            path=hci0.path,
            interface="org.bluez.Adapter1",
            member="StartDiscovery",
        )
        reply = await bus.call(start)
        assert reply is not None
        assert reply.message_type is MessageType.METHOD_RETURN
        await wait_until(lambda: bool(signals))  # the wearable's InterfacesAdded
        assert wearable.exported
        assert hci0.discovering
        assert {path for path, _ in signals} == {"/"}
        # Like libdbus under bluetoothd: a call on a path nobody exports is UnknownObject,
        # which bleak's connect() turns into BleakDeviceNotFoundError.
        ghost = Message(
            destination="org.bluez",
            path=f"{hci0.path}/dev_00_00_00_00_00_00",
            interface="org.bluez.Device1",
            member="Connect",
        )
        reply = await bus.call(ghost)
        assert reply is not None
        assert reply.error_name == "org.freedesktop.DBus.Error.UnknownObject"
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()
    # The client vanished without StopDiscovery: bluetoothd's disconnect watch ends the session.
    await wait_until(lambda: not hci0.discovering)


@pytest.mark.asyncio
async def test_powering_the_adapter_off_drops_links(fake: FakeBluez, wearable: FakeDevice) -> None:
    lost = asyncio.Event()
    client = BleakClient(await find(WEARABLE), disconnected_callback=lambda _c: lost.set())
    await client.connect()
    await fake.adapters["hci0"].set_powered(False)
    async with asyncio.timeout(TIMEOUT):
        await lost.wait()
    await client.disconnect()
    assert peripheral_of(wearable).events[-1] == f"disconnect:{DisconnectReason.ADAPTER}"
    with pytest.raises(BleakDBusError) as caught:
        await BleakScanner.discover(timeout=0.1, bluez={"adapter": "hci0"})
    assert caught.value.dbus_error == BluezError.NOT_READY


@pytest.mark.asyncio
async def test_unplugged_adapter_disappears(fake: FakeBluez, hci0: FakeAdapter) -> None:
    hci1 = await fake.add_adapter("hci1", "00:1A:7D:DA:71:02")
    await fake.add_device(hci1, WEARABLE, "w", [gatt.SERVICE_UUID])
    assert await BleakScanner.find_device_by_address(WEARABLE, bluez={"adapter": "hci1"})
    await fake.remove_adapter(hci1)
    await wait_until(lambda: "hci1" not in fake.adapters)
    with pytest.raises(BleakError, match="hci1"):  # not found, by bleak or by BlueZ
        await BleakScanner.discover(timeout=0.1, bluez={"adapter": "hci1"})


# --- throughput (make bench) -------------------------------------------------------------------

THROUGHPUT_COUNT = 50_000

#: The gateway side of the separate-process benchmark: plain bleak, as the gateway uses it.
THROUGHPUT_CLIENT = """
import asyncio, sys, time
from bleak import BleakClient, BleakScanner

async def main():
    address, char, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    device = await BleakScanner.find_device_by_address(address, timeout=10)
    done = asyncio.Event()
    received = 0
    def on_notify(_char, _data):
        nonlocal received
        received += 1
        if received == count:
            done.set()
    async with BleakClient(device) as client:
        await client.start_notify(char, on_notify)
        print("ready", flush=True)
        await asyncio.wait_for(done.wait(), 300)
    print(f"received {received}", flush=True)

asyncio.run(main())
"""


async def _throughput_same_loop(wearable: FakeDevice, payload: bytes) -> float:
    received = 0
    done = asyncio.Event()

    def on_notify(_char: object, _data: bytearray) -> None:
        nonlocal received
        received += 1
        if received == THROUGHPUT_COUNT:
            done.set()

    async with BleakClient(await find(WEARABLE)) as client:
        await client.start_notify(gatt.DATA_CHAR_UUID, on_notify)
        started = time.perf_counter()
        for _ in range(THROUGHPUT_COUNT):
            assert await wearable.notify(gatt.DATA_CHAR_UUID, payload)
        async with asyncio.timeout(300):
            await done.wait()
        return time.perf_counter() - started


async def _throughput_separate_process(wearable: FakeDevice, payload: bytes) -> float:
    gateway = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        THROUGHPUT_CLIENT,
        WEARABLE,
        gatt.DATA_CHAR_UUID,
        str(THROUGHPUT_COUNT),
        stdout=asyncio.subprocess.PIPE,
    )
    assert gateway.stdout is not None
    try:
        async with asyncio.timeout(300):
            assert await gateway.stdout.readline() == b"ready\n"
            started = time.perf_counter()
            for _ in range(THROUGHPUT_COUNT):
                assert await wearable.notify(gatt.DATA_CHAR_UUID, payload)
            line = await gateway.stdout.readline()
            elapsed = time.perf_counter() - started
            assert line == f"received {THROUGHPUT_COUNT}\n".encode()
            await gateway.wait()
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()
        await gateway.stdout.read()
    return elapsed


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("layout", ["same-loop", "separate-process"])
async def test_sustained_notification_throughput(
    fake: FakeBluez, wearable: FakeDevice, layout: str
) -> None:
    """Notifications/s from FakeDevice.notify into a bleak callback, 244-byte payloads (MTU 247).

    ``.venv/bin/pytest -m slow -k throughput -s tests/test_emulator_bluez.py``; the figures go in
    docs/emulator.md. "same-loop": bleak and the emulator share one event loop (how the test
    suite runs). "separate-process": bleak runs in its own process, as the gateway does.
    dbus-daemon is a third process either way.
    """
    await wearable.load_bond()  # its characteristics need a link encrypted with a bond
    payload = bytes(range(244))
    if layout == "same-loop":
        elapsed = await _throughput_same_loop(wearable, payload)
    else:
        elapsed = await _throughput_separate_process(wearable, payload)
    print(
        f"\n{layout}: {THROUGHPUT_COUNT} notifications in {elapsed:.2f} s = "
        f"{THROUGHPUT_COUNT / elapsed:,.0f}/s ({fake.flow.pings} pings, {fake.flow.waits} waits)"
    )
