"""Canary: the private bleak (and dbus-fast) details the BLE emulator is built on.

The emulator (gatewayd/emulator/bluez*.py) imitates bluetoothd exactly as far as bleak looks.
When a bleak or dbus-fast upgrade changes what it looks at, one of these tests fails with a
message saying what changed and where the emulator has to follow; the emulator's own tests
(tests/test_emulator_bluez.py) would otherwise fail in more confusing ways, or worse, keep
passing while the real gateway breaks. Update the pins only after re-reading the bleak source.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from bleak import BleakClient, BleakScanner
from bleak.backends.bluezdbus import client as bluez_client
from bleak.backends.bluezdbus import defs, utils, version
from bleak.backends.bluezdbus import manager as bluez_manager
from bleak.backends.bluezdbus.scanner import BleakScannerBlueZDBus
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.service import BleakGATTService
from dbus_fast import Message, Variant
from dbus_fast.constants import ErrorType
from dbus_fast.service import ServiceInterface

from gatewayd.emulator import (
    BLUEZ_VERSION,
    FakeBluez,
    PrivateBus,
    StaticPeripheral,
    install_bluetoothctl_shim,
    wearable_service,
)
from gatewayd.emulator.bluez import FakeAdapter, FakeDevice
from gatewayd.emulator.bluez_dbus import Device1, EmulatorBus, interfaces_added
from gatewayd.protocol import gatt
from tests.emulator_fixtures import bluetoothctl_shim, release_bleak_manager

__all__ = ["bluetoothctl_shim"]  # the shared fixture (a file write, done before the loop runs)

#: The bleak release whose BlueZ backend the emulator was checked against, line by line.
VERIFIED_BLEAK = "3.1"
#: And the dbus-fast release whose service and writer internals it relies on.
VERIFIED_DBUS_FAST = "5.2"

EMULATOR = "gatewayd/emulator/bluez.py"
DBUS_SURFACE = "gatewayd/emulator/bluez_dbus.py"
DEVICE = "/org/bluez/hci0/dev_C0_FF_EE_00_00_01"
WEARABLE = "C0:FF:EE:00:00:01"
#: A second wearable, not bonded yet (what `gatewayd pair` meets).
UNBONDED = "C0:FF:EE:00:00:42"


def _major_minor(distribution: str) -> str:
    return ".".join(importlib.metadata.version(distribution).split(".")[:2])


def test_bleak_is_the_version_the_emulator_was_checked_against() -> None:
    installed = importlib.metadata.version("bleak")
    assert _major_minor("bleak") == VERIFIED_BLEAK, (
        f"bleak {installed} is installed; the emulator was checked against bleak "
        f"{VERIFIED_BLEAK}. Re-read bleak/backends/bluezdbus/{{client,manager,scanner,utils}}.py "
        f"for what it calls on org.bluez and which properties it reads, run these canaries, "
        f"update {EMULATOR} and docs/emulator.md, then VERIFIED_BLEAK here."
    )


def test_dbus_fast_is_the_version_the_emulator_was_checked_against() -> None:
    installed = importlib.metadata.version("dbus-fast")
    assert _major_minor("dbus-fast") == VERIFIED_DBUS_FAST, (
        f"dbus-fast {installed} is installed; the emulator was checked against "
        f"{VERIFIED_DBUS_FAST}. Re-check the writer's EAGAIN handling "
        f"(aio/message_bus.py _MessageWriter, the reason for gatewayd/emulator/bluez_flow.py), "
        f"export()'s InterfacesAdded hooks ({DBUS_SURFACE} EmulatorBus) and that user message "
        f"handlers run before method dispatch (CALLER), then update VERIFIED_DBUS_FAST."
    )


# --- object paths ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bleak_parses_the_emulators_gatt_object_paths() -> None:
    fake = FakeBluez("unix:path=/nonexistent")  # not entered: no bus needed for the layout
    adapter = FakeAdapter(fake, "hci0", "00:1A:7D:DA:71:01", 5, True)
    device = FakeDevice(
        fake,
        adapter,
        WEARABLE,
        name="w",
        advertised_uuids=(),
        services=(wearable_service(),),
        peripheral=StaticPeripheral(),
        rssi=-60,
        mtu=247,
        address_type="public",
        tx_power=None,
        manufacturer_data={},
        service_data={},
        connect_delay=0.0,
    )
    for service in device.services:
        assert utils.extract_service_handle_from_path(service.path) == service.handle, (
            "bleak no longer takes a service's handle from the last 4 hex digits of "
            f"'<device>/serviceXXXX'; follow it in FakeDevice._layout ({EMULATOR})"
        )
        for characteristic in service.children:
            assert utils.extract_service_handle_from_path(characteristic.path) == (
                characteristic.handle
            ), "bleak changed how it reads a characteristic handle from '.../charXXXX'"
            assert utils.device_path_from_characteristic_path(characteristic.path) == DEVICE, (
                "bleak no longer finds the device by cutting 21 characters "
                "('/serviceXXXX/charXXXX') off a characteristic path; notifications would not "
                f"reach the client. Follow it in FakeDevice._layout ({EMULATOR})"
            )
            for descriptor in characteristic.children:
                assert int(descriptor.path[-4:], 16) == descriptor.handle


# --- what bleak reads ----------------------------------------------------------------------------


def test_bleak_names_devices_from_alias_and_address() -> None:
    with pytest.raises(KeyError):
        utils.device_name_from_props({"Address": WEARABLE})  # type: ignore[typeddict-item]
    props: Any = {"Address": WEARABLE, "Alias": "C0-FF-EE-00-00-01"}
    assert utils.device_name_from_props(props) is None, (
        "bleak no longer treats Alias == dashed address as 'no name'; Device1.Alias defaults "
        f"to that in FakeDevice ({EMULATOR})"
    )
    props["Alias"] = "wearable-01"
    assert utils.device_name_from_props(props) == "wearable-01"


def test_bleak_picks_a_powered_adapter_with_the_central_role() -> None:
    manager = bluez_manager.BlueZManager()
    manager._adapters.add("/org/bluez/hci0")
    manager._properties["/org/bluez/hci0"] = {
        defs.ADAPTER_INTERFACE: {"Powered": True, "Roles": ["central", "peripheral"]}
    }
    assert manager.get_default_adapter() == "/org/bluez/hci0", (
        "bleak chooses its default adapter differently; check Adapter1 in "
        f"{DBUS_SURFACE} (Powered, Roles)"
    )


@pytest.mark.asyncio
async def test_bleak_delivers_notifications_from_properties_changed_value() -> None:
    char_path = f"{DEVICE}/service0001/char0002"
    manager = bluez_manager.BlueZManager()
    manager._properties[DEVICE] = {defs.DEVICE_INTERFACE: {"Connected": True}}
    manager._properties[char_path] = {defs.GATT_CHARACTERISTIC_INTERFACE: {"Value": b""}}
    received: list[tuple[str, bytes]] = []
    manager.add_device_watcher(
        DEVICE, lambda _connected: None, lambda path, value: received.append((path, value))
    )
    signal = Message.new_signal(
        char_path,
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        "sa{sv}as",
        [defs.GATT_CHARACTERISTIC_INTERFACE, {"Value": Variant("ay", b"\x01\x02")}, []],
    )
    manager._parse_msg(signal)
    assert received == [(char_path, b"\x01\x02")], (
        "bleak no longer turns PropertiesChanged(Value) on GattCharacteristic1 into "
        f"notification callbacks; FakeDevice.notify ({EMULATOR}) must follow"
    )


def test_bleak_accepts_object_manager_signals_from_root() -> None:
    manager = bluez_manager.BlueZManager()

    class Probe(ServiceInterface):
        def __init__(self) -> None:
            super().__init__(defs.ADAPTER_INTERFACE)

    manager._parse_msg(interfaces_added("/org/bluez/hci9", [Probe()]))
    assert "/org/bluez/hci9" in manager._adapters, (
        "bleak ignored InterfacesAdded sent from '/' (where bluetoothd's ObjectManager is); "
        f"see EmulatorBus in {DBUS_SURFACE}"
    )


class _RecordingBus:
    """Stands in for bleak's per-connection MessageBus and records what it is asked to call."""

    def __init__(self) -> None:
        self.members: list[str] = []

    async def call(self, message: Message) -> Message:
        self.members.append(message.member or "")
        message.serial = len(self.members)
        return Message.new_method_return(message)


@pytest.mark.asyncio
@pytest.mark.parametrize("use_start_notify", [True, False])
async def test_bleak_uses_start_notify_when_notify_acquired_is_absent(
    use_start_notify: bool,
) -> None:
    client = bluez_client.BleakClientBlueZDBus(
        WEARABLE, disconnected_callback=None, timeout=1.0, bluez={}
    )
    recorder = _RecordingBus()
    client._bus = recorder  # type: ignore[assignment]
    service = BleakGATTService(None, 1, gatt.SERVICE_UUID)
    # No NotifyAcquired property (a BlueZ older than 5.46, or a characteristic without notify).
    props = {"UUID": gatt.DATA_CHAR_UUID, "Flags": ["notify"], "MTU": 247}
    char = BleakGATTCharacteristic(
        (f"{DEVICE}/service0001/char0002", props),
        2,
        gatt.DATA_CHAR_UUID,
        ["notify"],
        lambda: 244,
        service,
    )
    await client.start_notify(
        char, lambda _data: None, bluez={"use_start_notify": use_start_notify}
    )
    assert recorder.members == ["StartNotify"], (
        "bleak no longer falls back to StartNotify when NotifyAcquired is absent; the gateway's "
        "[ble] acquire_notify = false and older BlueZ stacks rely on it "
        f"(GattCharacteristic1 in {DBUS_SURFACE})"
    )


def test_bleak_reads_the_mtu_property() -> None:
    assert bluez_manager.get_max_write_without_response_size({"MTU": 247}) == 244  # type: ignore[typeddict-item]
    assert bluez_manager.get_max_write_without_response_size({}) == 20, (  # type: ignore[typeddict-item]
        "bleak changed its MTU fallback; GattCharacteristic1.MTU in the emulator may matter more"
    )


def test_bleak_scanner_sends_an_le_discovery_filter() -> None:
    scanner = BleakScannerBlueZDBus(None, [gatt.SERVICE_UUID], "active", bluez={})
    filters = {key: variant.value for key, variant in scanner._filters.items()}
    assert filters == {
        "Transport": "le",
        "DuplicateData": False,
        "UUIDs": [gatt.SERVICE_UUID],
    }, f"bleak's SetDiscoveryFilter changed: {filters}; check _parse_filter in {EMULATOR}"


def test_bleak_keeps_one_bluez_manager_per_event_loop() -> None:
    assert isinstance(bluez_manager._global_instances, dict), (
        "bleak no longer keeps its BlueZ manager in manager._global_instances per event loop; "
        "tests/test_emulator_bluez.py release_bleak_manager() must follow"
    )
    source = inspect.getsource(bluez_manager.get_global_bluez_manager)
    assert "get_running_loop" in source


def test_bleak_probes_the_bluez_version_with_bluetoothctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_bluetoothctl_shim(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")

    async def probe() -> Any:
        return await version._get_bluetoothctl_version()

    found = asyncio.run(probe())
    assert found is not None, (
        "bleak no longer runs 'bluetoothctl --version' to check the BlueZ version; see how it "
        "checks now and retire install_bluetoothctl_shim or follow it"
    )
    assert tuple(map(int, found.groups())) == tuple(map(int, BLUEZ_VERSION.split(".")))
    assert hasattr(version.BlueZFeatures, "check_bluez_version")


def test_bleak_retries_connect_only_on_abort_by_local_and_knows_unknown_object() -> None:
    source = inspect.getsource(bluez_client.BleakClientBlueZDBus.connect)
    assert '"le-connection-abort-by-local"' in source, (
        "bleak changed which Connect errors it retries; FakeDevice.fail_next_connects and "
        f"CONNECTION_LIMIT ({EMULATOR}) assume only le-connection-abort-by-local is retried"
    )
    assert "UNKNOWN_OBJECT" in source, (
        "bleak no longer maps UnknownObject to BleakDeviceNotFoundError; see the UnknownObject "
        f"reply in FakeBluez._on_message ({EMULATOR})"
    )
    assert ErrorType.UNKNOWN_OBJECT.value == "org.freedesktop.DBus.Error.UnknownObject"


# --- dbus-fast details ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_dbus_fast_export_announces_through_the_hooks_the_emulator_silences() -> None:
    class Probe(EmulatorBus):
        def __init__(self) -> None:
            super().__init__(bus_address="unix:path=/nonexistent")
            self.hooks: list[str] = []

        def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
            self.hooks.append(f"added {path}")

        def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
            self.hooks.append(f"removed {path}")

    bus = Probe()
    interface = Device1.__new__(Device1)
    ServiceInterface.__init__(interface, defs.DEVICE_INTERFACE)
    bus.export(DEVICE, interface)
    bus.unexport(DEVICE, interface)
    assert bus.hooks == [f"added {DEVICE}", f"removed {DEVICE}"], (
        "dbus-fast's export()/unexport() no longer announce through _emit_interface_added/"
        f"_emit_interface_removed; EmulatorBus ({DBUS_SURFACE}) would let duplicate "
        "ObjectManager signals from the object path through"
    )


# --- end to end: what bleak calls ----------------------------------------------------------------


@pytest_asyncio.fixture
async def fake(
    bluetoothctl_shim: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeBluez]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon not installed (apt-get install dbus)")
    async with PrivateBus() as address, FakeBluez(address, report_interval=0.05) as emulator:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        hci0 = await emulator.add_adapter("hci0", "00:1A:7D:DA:71:01")
        await emulator.add_device(
            hci0,
            WEARABLE,
            "wearable-01",
            [gatt.SERVICE_UUID],
            [wearable_service()],
            peripheral=StaticPeripheral({gatt.INFO_CHAR_UUID: b"info"}),
            paired=True,  # the wearable's characteristics need an encrypted (bonded) link
        )
        await emulator.add_device(
            hci0,
            UNBONDED,
            "wearable-02",
            [gatt.SERVICE_UUID],
            [wearable_service()],
            peripheral=StaticPeripheral({gatt.INFO_CHAR_UUID: b"info"}),
        )
        try:
            yield emulator
        finally:
            await release_bleak_manager()


def _members(fake: FakeBluez, device: str | None = None) -> list[str]:
    return [
        f"{call.interface.rsplit('.', 1)[-1]}.{call.member}"
        for call in fake.call_log
        if call.path.startswith(device or DEVICE)
    ]


@pytest.mark.asyncio
async def test_bleak_pair_true_sets_trusted_then_pairs_without_connect(fake: FakeBluez) -> None:
    device = await BleakScanner.find_device_by_address(UNBONDED, timeout=5)
    assert device is not None
    async with BleakClient(device, pair=True):
        pass
    members = _members(fake, "/org/bluez/hci0/dev_" + UNBONDED.replace(":", "_"))
    assert members[:2] == ["Properties.Set", "Device1.Pair"], (
        f"bleak's connect(pair=True) now calls {members[:2]}; the emulator's Pair connects "
        f"and leaves the link up because bleak skips Connect after Pair ({EMULATOR})"
    )
    assert "Device1.Connect" not in members


@pytest.mark.asyncio
async def test_bleak_connects_reads_and_subscribes_with_these_calls(fake: FakeBluez) -> None:
    device = await BleakScanner.find_device_by_address(WEARABLE, timeout=5)
    assert device is not None
    async with BleakClient(device) as client:
        await client.read_gatt_char(gatt.INFO_CHAR_UUID)
        await client.start_notify(gatt.DATA_CHAR_UUID, lambda _c, _d: None)
    assert _members(fake) == [
        "Device1.Connect",
        "GattCharacteristic1.ReadValue",
        "GattCharacteristic1.StartNotify",
        "Device1.Disconnect",
    ], f"bleak's calls on a device changed: {_members(fake)}"
    # GetManagedObjects is how the emulator finds the connection to pace (bluez_flow.py).
    assert any(call.member == "GetManagedObjects" for call in fake.call_log)


def test_bleak_answers_whether_bluez_holds_a_bond_as_the_link_asks() -> None:
    # gatewayd.link.connection.bluez_paired checks the bond before touching a characteristic:
    # bleak's manager by event loop, is_paired(path) read from Device1.Paired.
    assert inspect.iscoroutinefunction(bluez_manager.get_global_bluez_manager)
    source = inspect.getsource(bluez_manager.BlueZManager.is_paired)
    assert '"Paired"' in source, (
        "bleak's BlueZManager.is_paired no longer reads Device1.Paired; gatewayd's bond check"
        " (gatewayd/link/connection.py) must follow"
    )


def test_bleak_reads_these_device1_properties() -> None:
    source = inspect.getsource(BleakScannerBlueZDBus._handle_advertising_data)
    for name in ("UUIDs", "Name", "ManufacturerData", "ServiceData", "TxPower", "RSSI", "Address"):
        assert f'"{name}"' in source, (
            f"bleak's scanner no longer reads Device1.{name}; re-check Device1 in {DBUS_SURFACE}"
        )
