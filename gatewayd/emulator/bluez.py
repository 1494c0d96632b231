"""A fake BlueZ on a private D-Bus: unmodified bleak sees adapters, devices and GATT objects.

Why: no test machine has a Bluetooth controller, and bleak on Linux only talks to
bluetoothd over D-Bus. :class:`FakeBluez` owns ``org.bluez`` on a bus (usually a
:class:`~gatewayd.emulator.bus.PrivateBus`) and exports what bluetoothd exports, named, typed and
ordered the way bleak 3.1 reads it::

    async with PrivateBus() as address, FakeBluez(address) as fake:
        hci0 = await fake.add_adapter("hci0", "00:1A:7D:DA:71:01", slots=5)
        dev = await fake.add_device(
            hci0, "C0:FF:EE:00:00:01", "wearable-01", [gatt.SERVICE_UUID],
            [wearable_service(), battery_service()], peripheral=my_wearable,
        )
        # the gateway, with DBUS_SYSTEM_BUS_ADDRESS=address, scans, connects, subscribes...
        await dev.notify(gatt.DATA_CHAR_UUID, fragment)

The Python side is :class:`FakeBluez` (adapters, devices), :class:`FakeAdapter` and
:class:`FakeDevice` (notifications and faults); the peripheral behind a device implements
:class:`~gatewayd.emulator.bluez_specs.Peripheral`. docs/emulator.md lists the bluetoothd
behaviours reproduced here and where each comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import stat
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Self

from dbus_fast import DBusError, Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.constants import ErrorType
from dbus_fast.service import ServiceInterface

from gatewayd.emulator.bluez_dbus import (
    ADAPTER_INTERFACE,
    BATTERY_INTERFACE,
    CALLER,
    CHARACTERISTIC_INTERFACE,
    DEVICE_INTERFACE,
    Adapter1,
    AgentManager1,
    Battery1,
    Device1,
    EmulatorBus,
    GattCharacteristic1,
    GattDescriptor1,
    GattNotifyCharacteristic1,
    GattService1,
    device_interface,
    interfaces_added,
    interfaces_removed,
    properties_changed,
)
from gatewayd.emulator.bluez_flow import DEFAULT_WINDOW, FlowControl, socket_cost
from gatewayd.emulator.bluez_specs import (
    ATT_ERROR_INSUFFICIENT_AUTHENTICATION,
    ATT_ERROR_INVALID_ATTRIBUTE_VALUE_LENGTH,
    ATT_ERROR_READ_NOT_PERMITTED,
    ATT_ERROR_WRITE_NOT_PERMITTED,
    CCCD_UUID,
    DEFAULT_ERROR_MESSAGES,
    BluezError,
    CharSpec,
    DescriptorSpec,
    DisconnectReason,
    GattError,
    Peripheral,
    ServiceSpec,
    StaticPeripheral,
    battery_service,
    gatt_error_reply,
    normalize_uuid,
    wearable_service,
)
from gatewayd.errors import EmulatorError
from gatewayd.protocol import gatt

__all__ = [
    "ABORT_BY_LOCAL",
    "ABORT_BY_REMOTE",
    "BLUEZ_SERVICE",
    "BLUEZ_VERSION",
    "CONNECTION_LIMIT",
    "DEFAULT_MTU",
    "DEFAULT_SLOTS",
    "HOST_DOWN",
    "BluezError",
    "CallRecord",
    "CharSpec",
    "DescriptorSpec",
    "DisconnectReason",
    "FakeAdapter",
    "FakeBluez",
    "FakeDevice",
    "GattAttribute",
    "GattError",
    "Peripheral",
    "ServiceSpec",
    "StaticPeripheral",
    "battery_service",
    "install_bluetoothctl_shim",
    "normalize_uuid",
    "wearable_service",
]

_LOG = logging.getLogger(__name__)

BLUEZ_SERVICE: Final = "org.bluez"
#: The bluetoothd version the emulator stands in for: Raspberry Pi OS / Debian 12 "bookworm".
#: Its D-Bus API has the GattCharacteristic1.MTU property (5.62+) and the detailed LE connection
#: errors (5.62+) bleak knows about. The bluetoothctl shim reports it.
BLUEZ_VERSION: Final = "5.66"
DEFAULT_SLOTS: Final = 5
DEFAULT_MTU: Final = 247
DEFAULT_RSSI: Final = -60

#: bluetoothd's message when the controller refuses another LE connection: the controller answers
#: HCI "Connection Limit Exceeded" (0x09), the kernel maps it to EMLINK (bt_to_errno in
#: net/bluetooth/lib.c; gatttool printed it as "Too many links"), bluetoothd to this string
#: (btd_error_le_errno, ERR_LE_CONN_SYNC_CONNECT_LIMIT in src/error.h) in org.bluez.Error.Failed.
CONNECTION_LIMIT: Final = "le-connection-concurrent-connection-limit"
#: ECONNABORTED: the local side gave up (RF trouble). bleak retries on this one by itself.
ABORT_BY_LOCAL: Final = "le-connection-abort-by-local"
#: ECONNRESET: the peripheral dropped the link while it was being set up.
ABORT_BY_REMOTE: Final = "le-connection-abort-by-remote"
#: EHOSTDOWN: nothing answered the connection request (the device is out of range or off).
HOST_DOWN: Final = "Host is down"
#: How long a connection attempt to a device out of range takes to fail (bluetoothd waits for
#: the controller's page/connection timeout; shortened here so tests stay quick).
OUT_OF_RANGE_CONNECT_S: Final = 1.0

_GAP_SERVICE_UUID: Final = normalize_uuid(0x1800)
_GATT_SERVICE_UUID: Final = normalize_uuid(0x1801)
_DEVICE_INFORMATION_UUID: Final = normalize_uuid(0x180A)
_MAX_ATTRIBUTE_LENGTH: Final = 512
_ATT_HEADER: Final = 3
_MIN_MTU: Final = 23
_MAX_MTU: Final = 517
#: The notify session bluetoothd's battery plugin holds on Battery Level.
_PLUGIN_SESSION: Final = "org.bluez.battery-plugin"
_ADAPTER_NAME = re.compile(r"^hci[0-9]+$")
_ADDRESS = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){5}$")
_FREEDESKTOP: Final = "org.freedesktop.DBus."
_NAME_OWNER_CHANGED_RULE: Final = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    "member='NameOwnerChanged'"
)
_READ_FLAGS: Final = frozenset(
    {"read", "encrypt-read", "encrypt-authenticated-read", "secure-read"}
)
_WRITE_FLAGS: Final = frozenset(
    {"write", "encrypt-write", "encrypt-authenticated-write", "secure-write", "reliable-write"}
)
_ENCRYPTED_FLAGS: Final = frozenset(
    {
        "encrypt-read",
        "encrypt-write",
        "encrypt-notify",
        "encrypt-indicate",
        "encrypt-authenticated-read",
        "encrypt-authenticated-write",
        "encrypt-authenticated-notify",
        "encrypt-authenticated-indicate",
        "secure-read",
        "secure-write",
        "secure-notify",
        "secure-indicate",
    }
)
_NOTIFY_FLAGS: Final = frozenset(
    {"notify", "indicate"} | {f for f in _ENCRYPTED_FLAGS if f.endswith(("notify", "indicate"))}
)
#: bluetoothd's Connect error when the LE link could not be encrypted because the peer has not the
#: bond's keys (ERR_LE_CONN_KEY_MISSING, bluez src/error.h): the kernel's encryption change fails
#: with "PIN or Key Missing", it disconnects with Authentication Failure, the ATT socket's connect
#: fails with EACCES.
KEY_MISSING: Final = "le-connection-key-missing"


def install_bluetoothctl_shim(directory: Path, version: str = BLUEZ_VERSION) -> Path:
    """Write an executable ``bluetoothctl`` into ``directory`` that answers ``--version``.

    bleak's BlueZ client runs ``bluetoothctl --version`` once per process (BlueZFeatures in
    bleak/backends/bluezdbus/version.py) and refuses BlueZ older than 5.55; without the binary it
    logs a warning and assumes a recent BlueZ. Putting this directory first on ``PATH`` (tests do
    it with monkeypatch; docs/emulator.md shows the shell form) makes that probe answer for the
    emulated bluetoothd instead of whatever the host has installed. Nothing else is emulated.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "bluetoothctl"
    shim.write_text(
        "#!/bin/sh\n"
        "# gatewayd BLE emulator: answers bleak's version probe for the emulated bluetoothd.\n"
        'case "$1" in\n'
        f'  --version|-v) echo "bluetoothctl: {version}" ;;\n'
        '  *) echo "gatewayd emulator: only --version is emulated" >&2; exit 1 ;;\n'
        "esac\n"
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


class CallRecord(NamedTuple):
    """A method call the fake bluetoothd received."""

    sender: str
    path: str
    interface: str
    member: str


@dataclass(eq=False)
class GattAttribute:
    """A service, characteristic or descriptor of an emulated device, with its D-Bus object."""

    kind: Literal["service", "characteristic", "descriptor"]
    device: FakeDevice
    uuid: str
    handle: int
    path: str
    parent_path: str
    flags: tuple[str, ...] = ()
    primary: bool = True
    value: bytes = b""
    #: Claimed by a bluetoothd plugin: never exported (GAP always; Battery with the plugin).
    hidden: bool = False
    children: list[GattAttribute] = field(default_factory=list)
    #: Notify sessions: unique bus names of the clients that called StartNotify (or
    #: AcquireNotify: then the only one, and ``notify_socket`` is set).
    sessions: set[str] = field(default_factory=set)
    #: AcquireNotify: bluetoothd's end of the socket pair, and the client that acquired it.
    notify_socket: socket.socket | None = None
    notify_owner: str = ""
    cccd: GattAttribute | None = None
    interface: ServiceInterface | None = None

    @property
    def notifies(self) -> bool:
        """Whether this characteristic can notify or indicate."""
        return bool(_NOTIFY_FLAGS.intersection(self.flags))


@dataclass
class _DiscoveryFilter:
    uuids: frozenset[str] = frozenset()
    rssi: int | None = None
    pattern: str = ""
    duplicate_data: bool = True

    def matches(self, device: FakeDevice) -> bool:
        if self.uuids and not self.uuids.intersection(device.advertised_uuids):
            return False
        if self.rssi is not None and device.rssi < self.rssi:
            return False
        if self.pattern:
            return device.address.startswith(self.pattern.upper()) or (
                device.name is not None and device.name.startswith(self.pattern)
            )
        return True


def _parse_filter(properties: Mapping[str, Variant]) -> _DiscoveryFilter | None:
    """Parse SetDiscoveryFilter's dict as bluetoothd does; None means "no filter"."""
    if not properties:
        return None
    result = _DiscoveryFilter()
    for key, variant in properties.items():
        value = variant.value
        if key == "UUIDs":
            try:
                result.uuids = frozenset(normalize_uuid(str(item)) for item in value)
            except ValueError:
                raise _error(BluezError.INVALID_ARGUMENTS) from None
        elif key == "RSSI":
            result.rssi = int(value)
        elif key == "Transport":
            if value not in ("auto", "bredr", "le"):
                raise _error(BluezError.INVALID_ARGUMENTS)
        elif key == "DuplicateData":
            result.duplicate_data = bool(value)
        elif key == "Pattern":
            result.pattern = str(value)
        elif key not in ("Pathloss", "Discoverable"):
            raise _error(BluezError.INVALID_ARGUMENTS)
    if "RSSI" in properties and "Pathloss" in properties:
        raise _error(BluezError.INVALID_ARGUMENTS)
    return result


def _error(name: str, message: str | None = None) -> DBusError:
    return DBusError(name, message or DEFAULT_ERROR_MESSAGES.get(name, "Operation failed"))


def _normalize_address(address: str) -> str:
    result = address.strip().upper().replace("-", ":")
    if not _ADDRESS.match(result):
        raise ValueError(f"not a Bluetooth address: {address!r}")
    return result


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _LOG.debug("D-Bus send failed", exc_info=future.exception())


class FakeBluez:
    """bluetoothd's D-Bus API on ``address``, driven from Python. An async context manager.

    ``report_interval``: seconds between advertisement reports (RSSI updates) while a client
    scans. ``temporary_timeout``: bluetoothd's TemporaryTimeout (main.conf, 30 s): a device that
    is neither paired nor trusted disappears from D-Bus this long after it was last seen or
    disconnected; None keeps it forever. ``battery_plugin``: like a stock bluetoothd, hide the
    Battery Service from GATT and export org.bluez.Battery1 instead (``bluetoothd -P battery``
    is False). ``flow_window`` (bytes of socket memory) and ``pace_consumers``: see
    :mod:`gatewayd.emulator.bluez_flow`. ``seed`` makes the RSSI jitter reproducible.
    """

    def __init__(
        self,
        address: str,
        *,
        report_interval: float = 0.2,
        temporary_timeout: float | None = 30.0,
        battery_plugin: bool = True,
        flow_window: int = DEFAULT_WINDOW,
        pace_consumers: bool = True,
        system_name: str = "gatewayd-emulator",
        seed: int | None = None,
    ) -> None:
        if report_interval <= 0:
            raise ValueError("report_interval must be positive")
        self.address = address
        self.report_interval = report_interval
        self.temporary_timeout = temporary_timeout
        self.battery_plugin = battery_plugin
        self.system_name = system_name
        self.random = random.Random(seed)
        #: The last method calls received, oldest first (bounded).
        self.call_log: deque[CallRecord] = deque(maxlen=10_000)
        self._flow_window = flow_window
        self._pace_consumers = pace_consumers
        self._bus: EmulatorBus | None = None
        self._flow: FlowControl | None = None
        self._adapters: dict[str, FakeAdapter] = {}
        self._agents = AgentManager1()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Exported object paths and how many interfaces each has.
        self._exported: dict[str, int] = {}
        self._entered = False
        self._closed = False
        #: Fault: bluetoothd stopped answering method calls (see :meth:`hang`).
        self.hung = False
        #: Method calls received (and never answered) while hung.
        self.unanswered = 0
        #: Notifications dropped because a client's AcquireNotify socket was full.
        self.notifications_dropped = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise EmulatorError("a FakeBluez can be entered only once; create a new one")
        self._entered = True
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def _start(self) -> None:
        bus = EmulatorBus(bus_address=self.address)
        self._bus = bus
        await bus.connect()
        self._flow = FlowControl(bus, window=self._flow_window, pace_consumers=self._pace_consumers)
        bus.add_message_handler(self._on_message)
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[_NAME_OWNER_CHANGED_RULE],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise EmulatorError(f"could not watch clients on the bus: {reply}")
        owner = await bus.request_name(BLUEZ_SERVICE, NameFlag.DO_NOT_QUEUE)
        if owner is not RequestNameReply.PRIMARY_OWNER:
            raise EmulatorError(
                f"{BLUEZ_SERVICE} is already owned on {self.address} ({owner.name}); "
                "is a real bluetoothd or another emulator on this bus?"
            )
        await self.announce("/org/bluez", [self._agents])

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closed = True
        for adapter in self._adapters.values():
            await adapter.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Failures were logged by _task_done already.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flow is not None:
            await self._flow.close()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    # -- Python API ------------------------------------------------------------------------

    def hang(self, hung: bool = True) -> None:
        """Fault: bluetoothd stops answering D-Bus method calls (or answers again, ``False``).

        Calls received while hung get no reply ever (a deadlocked or stopped bluetoothd: the
        caller's only way out is its own timeout); signals already queued still go out.
        """
        self.hung = hung

    @property
    def adapters(self) -> Mapping[str, FakeAdapter]:
        """Adapters by name (``hci0``…)."""
        return dict(self._adapters)

    @property
    def flow(self) -> FlowControl:
        """The flow control every signal goes through (counters for benchmarks)."""
        if self._flow is None:
            raise EmulatorError("FakeBluez is not running; use it as 'async with'")
        return self._flow

    async def add_adapter(
        self,
        name: str,
        address: str,
        *,
        slots: int = DEFAULT_SLOTS,
        powered: bool = True,
    ) -> FakeAdapter:
        """Add a powered LE adapter ``/org/bluez/<name>`` that holds ``slots`` connections."""
        self._check_running()
        if not _ADAPTER_NAME.match(name):
            raise ValueError(f"adapter names look like 'hci0', got {name!r}")
        if name in self._adapters:
            raise ValueError(f"adapter {name} exists already")
        if slots < 1:
            raise ValueError("an adapter needs at least one connection slot")
        adapter = FakeAdapter(self, name, _normalize_address(address), slots, powered)
        self._adapters[name] = adapter
        await self.announce(adapter.path, [adapter.interface])
        return adapter

    async def remove_adapter(self, adapter: FakeAdapter | str) -> None:
        """Unplug an adapter: its links drop, its devices and its object disappear."""
        found = self._adapter(adapter)
        await found.set_powered(False)
        for device in list(found.devices.values()):
            await self.remove_device(device)
        del self._adapters[found.name]
        await self.withdraw(found.path, [found.interface])

    async def add_device(
        self,
        adapter: FakeAdapter | str,
        address: str,
        name: str | None = None,
        advertised_uuids: Iterable[str] = (),
        services: Sequence[ServiceSpec] = (),
        *,
        peripheral: Peripheral | None = None,
        rssi: int = DEFAULT_RSSI,
        mtu: int = DEFAULT_MTU,
        address_type: Literal["public", "random"] = "public",
        tx_power: int | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        connect_delay: float = 0.0,
        paired: bool = False,
        holds_keys: bool | None = None,
        bondable: bool = True,
    ) -> FakeDevice:
        """Put an advertising peripheral in range of ``adapter``.

        It appears on D-Bus when a client discovers it (InterfacesAdded while scanning), or at
        once when ``paired`` (bluetoothd loads bonded devices at start). ``mtu`` is the ATT MTU
        the link negotiates; notifications carry at most ``mtu - 3`` bytes.

        ``holds_keys``: whether the peripheral has the keys of BlueZ's bond with this address
        (default: ``paired``). ``paired=True, holds_keys=False`` is an IMPOSTOR: a device that
        advertises a bonded device's address without its keys; BlueZ then fails every connection
        with ``le-connection-key-missing``. ``bondable=False``: the device cannot bond (a basic
        heart-rate strap): Pair fails with AuthenticationFailed.
        """
        self._check_running()
        found = self._adapter(adapter)
        normalized = _normalize_address(address)
        if normalized in found.devices:
            raise ValueError(f"{normalized} is already in range of {found.name}")
        if not _MIN_MTU <= mtu <= _MAX_MTU:
            raise ValueError(f"ATT MTU must be within {_MIN_MTU}..{_MAX_MTU}, got {mtu}")
        device = FakeDevice(
            self,
            found,
            normalized,
            name=name,
            advertised_uuids=tuple(normalize_uuid(u) for u in advertised_uuids),
            services=tuple(services),
            peripheral=peripheral if peripheral is not None else StaticPeripheral(),
            rssi=rssi,
            mtu=mtu,
            address_type=address_type,
            tx_power=tx_power,
            manufacturer_data=dict(manufacturer_data or {}),
            service_data={normalize_uuid(k): bytes(v) for k, v in (service_data or {}).items()},
            connect_delay=connect_delay,
        )
        device.bondable = bondable
        device.holds_keys = paired if holds_keys is None else holds_keys
        found.devices[normalized] = device
        if paired:
            device.paired = device.bonded = device.trusted = True
            await device.ensure_exported()
        return device

    async def remove_device(self, device: FakeDevice) -> None:
        """Take a peripheral out of range for good: its link is lost, its object removed."""
        device.in_range = False
        await device.drop_link(DisconnectReason.TIMEOUT)
        device.cancel_expiry()
        await device.unexport()
        device.adapter.devices.pop(device.address, None)

    # -- plumbing shared by adapters and devices --------------------------------------------

    @property
    def bus(self) -> EmulatorBus:
        """The emulator's own D-Bus connection."""
        if self._bus is None:
            raise EmulatorError("FakeBluez is not running; use it as 'async with'")
        return self._bus

    async def announce(self, path: str, interfaces: Sequence[ServiceInterface]) -> None:
        """Export interfaces at ``path`` and send InterfacesAdded from ``/``."""
        await self.flow.acquire()
        self.announce_now(path, interfaces)

    def announce_now(self, path: str, interfaces: Sequence[ServiceInterface]) -> None:
        """:meth:`announce` for a caller that holds a flow-control credit already.

        Synchronous on purpose: the export and its signal happen with no await in between, so
        a concurrent teardown never sees an exported object it does not know about.
        """
        for interface in interfaces:
            self.bus.export(path, interface)
        self._exported[path] = self._exported.get(path, 0) + len(interfaces)
        self.send(interfaces_added(path, interfaces))

    async def withdraw(self, path: str, interfaces: Sequence[ServiceInterface]) -> None:
        """Unexport interfaces at ``path`` and send InterfacesRemoved from ``/``."""
        await self.flow.acquire()
        self.withdraw_now(path, interfaces)

    def withdraw_now(self, path: str, interfaces: Sequence[ServiceInterface]) -> None:
        """:meth:`withdraw` for a caller that holds a flow-control credit already."""
        for interface in interfaces:
            self.bus.unexport(path, interface)
        remaining = self._exported.get(path, 0) - len(interfaces)
        if remaining > 0:
            self._exported[path] = remaining
        else:
            self._exported.pop(path, None)
        self.send(interfaces_removed(path, [interface.name for interface in interfaces]))

    async def changed(self, path: str, interface: str, values: Mapping[str, Variant]) -> None:
        """Send PropertiesChanged for properties whose new values are already in the model."""
        await self.flow.acquire()
        self.send(properties_changed(path, interface, dict(values)))

    def send(self, message: Message) -> None:
        """Queue a message; callers took a flow-control credit first."""
        if self._bus is None:
            return
        self._bus.send(message).add_done_callback(_consume_exception)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Run a background coroutine owned by the emulator (cancelled on exit, errors logged)."""
        if self._closed:
            coro.close()
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, EmulatorError) and self._closed:
            return
        if exc is not None:
            _LOG.error("emulator task %s failed", task.get_name(), exc_info=exc)

    def _check_running(self) -> None:
        if self._bus is None or self._closed:
            raise EmulatorError("FakeBluez is not running; use it as 'async with'")

    def _adapter(self, adapter: FakeAdapter | str) -> FakeAdapter:
        name = adapter if isinstance(adapter, str) else adapter.name
        try:
            return self._adapters[name]
        except KeyError:
            raise ValueError(f"no adapter {name}") from None

    def _on_message(self, message: Message) -> Message | bool | None:
        # dbus-fast runs this before dispatching each message, in the same context as the
        # dispatch: CALLER then names the client for the method (and its task, if a coroutine).
        if message.message_type is MessageType.METHOD_CALL and self.hung:
            self.unanswered += 1
            return True  # handled: no reply, no dispatch
        if message.message_type is MessageType.METHOD_CALL:
            sender = message.sender or ""
            path = message.path or ""
            interface = message.interface or ""
            CALLER.set(sender)
            self.call_log.append(CallRecord(sender, path, interface, message.member or ""))
            if message.member == "GetManagedObjects" and self._flow is not None:
                self._flow.add_consumer(sender)
            if path not in self._exported and not interface.startswith(_FREEDESKTOP):
                # libdbus, under bluetoothd, answers calls on unregistered paths with
                # UnknownObject (dbus-fast would say UnknownMethod); bleak's connect() turns
                # exactly that into BleakDeviceNotFoundError for a device BlueZ forgot.
                return Message.new_error(
                    message, ErrorType.UNKNOWN_OBJECT.value, f"No such object path '{path}'"
                )
        elif (
            message.message_type is MessageType.SIGNAL
            and message.member == "NameOwnerChanged"
            and message.sender == "org.freedesktop.DBus"
        ):
            name, _old, new = message.body
            if name.startswith(":") and not new:
                self._client_left(name)
        return None

    def _client_left(self, name: str) -> None:
        """bluetoothd's disconnect watches: a client's discovery and notify sessions end."""
        if self._flow is not None:
            self._flow.discard_consumer(name)
        self._agents.forget(name)
        for adapter in self._adapters.values():
            adapter.client_left(name)


class FakeAdapter:
    """An emulated controller: ``/org/bluez/hciN`` with org.bluez.Adapter1."""

    def __init__(self, fake: FakeBluez, name: str, address: str, slots: int, powered: bool) -> None:
        self.fake = fake
        self.name = name
        self.address = address
        self.slots = slots
        self.powered = powered
        self.path = f"/org/bluez/{name}"
        self.alias = fake.system_name
        self.system_name = fake.system_name
        major, minor = (int(part) for part in BLUEZ_VERSION.split("."))
        self.modalias = f"usb:v1D6Bp0246d{(major << 8) | minor:04X}"
        self.local_uuids = (_GATT_SERVICE_UUID, _DEVICE_INFORMATION_UUID, _GAP_SERVICE_UUID)
        #: Peripherals in range, by address.
        self.devices: dict[str, FakeDevice] = {}
        self.interface = Adapter1(self)
        self._filters: dict[str, _DiscoveryFilter | None] = {}
        self._sessions: dict[str, _DiscoveryFilter | None] = {}
        self._scan: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"FakeAdapter({self.name}, {self.address}, slots={self.slots})"

    @property
    def discovering(self) -> bool:
        """Whether the adapter scans (some client has a discovery session)."""
        return self._scan is not None

    @property
    def busy_slots(self) -> int:
        """Links up or being set up (they all hold a controller connection slot)."""
        return sum(1 for device in self.devices.values() if device.link_state != "idle")

    async def set_powered(self, powered: bool) -> None:
        """Power the adapter on or off; off ends discovery and drops every link."""
        if powered == self.powered:
            return
        if not powered:
            self._sessions.clear()
            await self._stop_scan()
            for device in list(self.devices.values()):
                await device.drop_link(DisconnectReason.ADAPTER)
        self.powered = powered
        await self.fake.changed(
            self.path,
            ADAPTER_INTERFACE,
            {
                "Powered": Variant("b", powered),
                "PowerState": Variant("s", "on" if powered else "off"),
            },
        )

    def request_powered(self, powered: bool) -> None:
        """Powered set over D-Bus (a synchronous property setter)."""
        self.fake.spawn(self.set_powered(powered), name=f"{self.name}-power")

    def set_alias(self, alias: str) -> None:
        """Alias set over D-Bus; empty restores the system name."""
        self.alias = alias or self.system_name
        self.fake.spawn(
            self.fake.changed(self.path, ADAPTER_INTERFACE, {"Alias": Variant("s", self.alias)}),
            name=f"{self.name}-alias",
        )

    # -- discovery (bluez src/adapter.c start_discovery / stop_discovery / set_discovery_filter)

    def start_discovery(self, sender: str) -> None:
        """StartDiscovery: one discovery session per client."""
        if not self.powered:
            raise _error(BluezError.NOT_READY)
        if sender in self._sessions:
            raise _error(BluezError.IN_PROGRESS, "Operation already in progress")
        self._sessions[sender] = self._filters.get(sender)
        if self._scan is None:
            self._scan = self.fake.spawn(self._scan_loop(), name=f"{self.name}-discovery")

    def stop_discovery(self, sender: str) -> None:
        """StopDiscovery: ends the caller's session; the scan stops with the last one."""
        if not self.powered:
            raise _error(BluezError.NOT_READY)
        if sender not in self._sessions:
            raise _error(BluezError.FAILED, "No discovery started")
        del self._sessions[sender]
        if not self._sessions:
            self.fake.spawn(self._stop_scan(), name=f"{self.name}-stop-discovery")

    def set_discovery_filter(self, sender: str, properties: Mapping[str, Variant]) -> None:
        """SetDiscoveryFilter: stored per client, applied to its (next) session."""
        if not self.powered:
            raise _error(BluezError.NOT_READY)
        parsed = _parse_filter(properties)
        self._filters[sender] = parsed
        if sender in self._sessions:
            self._sessions[sender] = parsed

    def client_left(self, sender: str) -> None:
        """A client left the bus: its filter, its discovery session and notify sessions end."""
        self._filters.pop(sender, None)
        if sender in self._sessions:
            del self._sessions[sender]
            if not self._sessions:
                self.fake.spawn(self._stop_scan(), name=f"{self.name}-stop-discovery")
        for device in self.devices.values():
            device.client_left(sender)

    def sees(self, device: FakeDevice) -> bool:
        """Whether a running discovery reports ``device`` (any session's filter matches)."""
        if not device.in_range or device.link_state != "idle" or not self._sessions:
            return False
        return any(f is None or f.matches(device) for f in self._sessions.values())

    def wants_duplicates(self) -> bool:
        """Whether some session asked for DuplicateData=False (re-send unchanged adverts)."""
        return any(f is not None and not f.duplicate_data for f in self._sessions.values())

    async def _scan_loop(self) -> None:
        await self.fake.changed(self.path, ADAPTER_INTERFACE, {"Discovering": Variant("b", True)})
        while True:
            for device in list(self.devices.values()):
                if self.sees(device):
                    await device.report_advertisement()
            await asyncio.sleep(self.fake.report_interval)

    async def _stop_scan(self) -> None:
        if self._sessions:
            return  # a client started again before this ran
        scan, self._scan = self._scan, None
        if scan is None:
            return
        scan.cancel()
        await asyncio.gather(scan, return_exceptions=True)
        if self._scan is None:  # else a client started a new scan meanwhile
            await self.fake.changed(
                self.path, ADAPTER_INTERFACE, {"Discovering": Variant("b", False)}
            )
            for device in self.devices.values():
                device.arm_expiry()

    async def close(self) -> None:
        """Stop the discovery task and the expiry timers (emulator shutdown)."""
        scan, self._scan = self._scan, None
        if scan is not None:
            scan.cancel()
            await asyncio.gather(scan, return_exceptions=True)
        for device in self.devices.values():
            device.cancel_expiry()
            device.close_notify_sockets()

    async def remove_device_object(self, path: str) -> None:
        """RemoveDevice: disconnect, forget the bond, remove the object (bleak's unpair)."""
        device = next((d for d in self.devices.values() if d.path == path and d.exported), None)
        if device is None:
            raise _error(BluezError.DOES_NOT_EXIST)
        await device.drop_link(DisconnectReason.LOCAL)
        device.paired = device.bonded = device.trusted = False
        device.cancel_expiry()
        await device.unexport()


LinkState = Literal["idle", "connecting", "connected", "disconnecting"]


class FakeDevice:
    """An emulated peripheral in range of one adapter, and its BlueZ device object.

    The Python API for virtual wearables and fault injection: :meth:`notify`, :attr:`connected`,
    :meth:`notifying`, :meth:`drop_link`, :meth:`fail_next_connects`, :meth:`fail_next_pairs`.
    """

    def __init__(
        self,
        fake: FakeBluez,
        adapter: FakeAdapter,
        address: str,
        *,
        name: str | None,
        advertised_uuids: tuple[str, ...],
        services: tuple[ServiceSpec, ...],
        peripheral: Peripheral,
        rssi: int,
        mtu: int,
        address_type: str,
        tx_power: int | None,
        manufacturer_data: dict[int, bytes],
        service_data: dict[str, bytes],
        connect_delay: float,
    ) -> None:
        self.fake = fake
        self.adapter = adapter
        self.address = address
        self.name = name
        self.advertised_uuids = advertised_uuids
        self.peripheral = peripheral
        #: The RSSI around which reports jitter; change it to move the device.
        self.rssi = rssi
        self.current_rssi = rssi
        self.mtu = mtu
        self.address_type = address_type
        self.tx_power = tx_power
        self.manufacturer_data = manufacturer_data
        self.service_data = service_data
        self.connect_delay = connect_delay
        self.path = f"{adapter.path}/dev_{address.replace(':', '_')}"
        self.alias = name or address.replace(":", "-")
        self.uuids: tuple[str, ...] = advertised_uuids
        self.paired = False
        self.bonded = False
        self.trusted = False
        self.blocked = False
        #: The peripheral side holds the keys of BlueZ's bond (False: an impostor, or a device
        #: whose bond was cleared); ``paired``/``bonded`` are BlueZ's side.
        self.holds_keys = False
        #: Whether the peripheral can bond at all.
        self.bondable = True
        #: Whether the current link is encrypted with the bond's keys.
        self.encrypted = False
        self.services_resolved = False
        self.in_range = True
        self.link_state: LinkState = "idle"
        self.battery_percentage = 0
        self._services = self._layout(services)
        self._characteristics: dict[str, GattAttribute] = {}
        for service in self._services:
            for characteristic in service.children:
                self._characteristics.setdefault(characteristic.uuid, characteristic)
        self._battery_level = next(
            (
                c
                for s in self._services
                if s.hidden and s.uuid == gatt.BATTERY_SERVICE_UUID
                for c in s.children
                if c.uuid == gatt.BATTERY_LEVEL_CHAR_UUID
            ),
            None,
        )
        self._device_interface: Device1 | None = None
        self._battery_interface: Battery1 | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._abort_reason: DisconnectReason | None = None
        self._link_generation = 0
        self._pairing = False
        self._cancel_pairing = False
        self._connect_faults: deque[tuple[str, str]] = deque()
        self._pair_faults: deque[tuple[str, str]] = deque()
        self._last_seen = asyncio.get_running_loop().time()
        self._expiry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"FakeDevice({self.address}, {self.name!r}, {self.link_state})"

    # -- Python API ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether BlueZ reports the device connected."""
        return self.link_state == "connected"

    @property
    def exported(self) -> bool:
        """Whether the device object exists on D-Bus (discovered, paired, not yet expired)."""
        return self._device_interface is not None

    @property
    def temporary(self) -> bool:
        """bluetoothd forgets temporary devices TemporaryTimeout after they were last seen."""
        return not (self.paired or self.trusted)

    @property
    def services(self) -> tuple[GattAttribute, ...]:
        """The GATT services with their handles and D-Bus paths (hidden ones included)."""
        return tuple(self._services)

    def characteristic(self, char_uuid: str) -> GattAttribute:
        """The first characteristic with this UUID."""
        try:
            return self._characteristics[normalize_uuid(char_uuid)]
        except KeyError:
            raise KeyError(f"{self.address} has no characteristic {char_uuid}") from None

    def notifying(self, char_uuid: str) -> bool:
        """Whether some client (or bluetoothd's battery plugin) enabled notifications."""
        return self.connected and bool(self.characteristic(char_uuid).sessions)

    async def notify(self, char_uuid: str, data: bytes) -> bool:
        """Send a notification; returns False when it went nowhere (no link, nobody listening).

        Waits for flow control (see :mod:`gatewayd.emulator.bluez_flow`), so a wearable looping
        on this is paced by how fast the bus and the gateway read. ``data`` longer than
        ``mtu - 3`` raises ValueError: a real stack cannot send it either.
        """
        characteristic = self.characteristic(char_uuid)
        if not characteristic.notifies:
            raise ValueError(f"{characteristic.uuid} does not notify or indicate")
        payload = bytes(data)
        if len(payload) > self.mtu - _ATT_HEADER:
            raise ValueError(
                f"{len(payload)} bytes do not fit a notification at ATT MTU {self.mtu} "
                f"(at most {self.mtu - _ATT_HEADER})"
            )
        if not self.connected or not characteristic.sessions:
            return False
        if characteristic.notify_socket is not None:
            return self._send_acquired(characteristic, characteristic.notify_socket, payload)
        await self.fake.flow.acquire(socket_cost(len(payload)))
        if not self.connected or not characteristic.sessions:
            return False
        if characteristic is self._battery_level:
            return self._battery_changed(payload)
        characteristic.value = payload
        self.fake.send(
            properties_changed(
                characteristic.path, CHARACTERISTIC_INTERFACE, {"Value": Variant("ay", payload)}
            )
        )
        return True

    def _send_acquired(
        self, characteristic: GattAttribute, sock: socket.socket, payload: bytes
    ) -> bool:
        """AcquireNotify's path (gatt-client.c ``notify_io_cb``): one datagram, never waits.

        bluetoothd writes without blocking and drops the notification when the client's socket
        is full (it logs ``sendmsg: Resource temporarily unavailable``); so does this, counting
        it in :attr:`FakeBluez.notifications_dropped`.
        """
        try:
            sock.send(payload)
        except BlockingIOError:
            self.fake.notifications_dropped += 1
            _LOG.warning(
                "%s: notification dropped: the client's AcquireNotify socket is full",
                self.address,
            )
            return False
        except OSError as exc:  # the client closed its end; the hang-up is on its way
            _LOG.debug("%s: AcquireNotify socket: %s", self.address, exc)
            self._release_acquired(characteristic)
            return False
        return True

    async def drop_link(self, reason: DisconnectReason = DisconnectReason.TIMEOUT) -> None:
        """Fault: the link ends without the central asking (as bluetoothd reports a loss).

        ServicesResolved and Connected go False and the GATT objects are removed; bleak's
        disconnected_callback fires. A connection attempt in progress fails instead.
        """
        if self.link_state == "connecting":
            self._abort_reason = reason
            await self._idle.wait()
        elif self.link_state == "connected":
            await self._teardown(reason)
        elif self.link_state == "disconnecting":
            await self._idle.wait()

    async def load_bond(self) -> None:
        """Both sides hold a bond, as after an earlier pairing (bluetoothd loaded it at start)."""
        self.paired = self.bonded = self.trusted = self.holds_keys = True
        self.cancel_expiry()
        if not self.exported:
            await self.ensure_exported()
            return
        await self.fake.changed(
            self.path,
            DEVICE_INTERFACE,
            {n: Variant("b", True) for n in ("Paired", "Bonded", "Trusted")},
        )

    async def set_in_range(self, in_range: bool) -> None:
        """Fault: the device walks out of range (or comes back).

        Out of range, the link is lost (supervision timeout), scans stop reporting it and a
        connection attempt fails after :data:`OUT_OF_RANGE_CONNECT_S` with
        ``org.bluez.Error.Failed: Host is down``. Back in range, it advertises again.
        """
        self.in_range = in_range
        if not in_range:
            await self.drop_link(DisconnectReason.TIMEOUT)

    def fail_next_connects(
        self, count: int = 1, error: str = BluezError.IN_PROGRESS, message: str | None = None
    ) -> None:
        """Fault: the next ``count`` Connect (or Pair-initiated connect) calls fail.

        ``error`` is the D-Bus error name, ``message`` its text (bluetoothd's default for the
        name when omitted). ``org.bluez.Error.Failed`` with :data:`ABORT_BY_LOCAL` reproduces
        bluetoothd's sequence for that error (Connected goes True then False before the reply);
        bleak then retries by itself.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        text = message if message is not None else DEFAULT_ERROR_MESSAGES.get(error, "Failed")
        self._connect_faults.extend([(error, text)] * count)

    def fail_next_pairs(
        self,
        count: int = 1,
        error: str = BluezError.AUTHENTICATION_FAILED,
        message: str | None = None,
    ) -> None:
        """Fault: the next ``count`` Pair calls fail after connecting (the link stays up)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        text = message if message is not None else DEFAULT_ERROR_MESSAGES.get(error, "Failed")
        self._pair_faults.extend([(error, text)] * count)

    # -- D-Bus object ----------------------------------------------------------------------

    async def ensure_exported(self) -> None:
        """Create the device object (InterfacesAdded), as discovery or a loaded bond does."""
        if self.exported:
            return
        await self.fake.flow.acquire()
        self._export_now()

    def _export_now(self) -> None:
        if self._device_interface is not None:
            return  # exported by someone else while we waited for the credit
        absent = [
            name
            for name, missing in (
                ("Name", self.name is None),
                ("TxPower", self.tx_power is None),
                ("ManufacturerData", not self.manufacturer_data),
                ("ServiceData", not self.service_data),
            )
            if missing
        ]
        interface = device_interface(self, absent)
        self.fake.announce_now(self.path, [interface])
        self._device_interface = interface

    async def unexport(self) -> None:
        """Remove the device object (InterfacesRemoved)."""
        if self._device_interface is None:
            return
        await self.fake.flow.acquire()
        interface, self._device_interface = self._device_interface, None
        if interface is not None:
            self.fake.withdraw_now(self.path, [interface])

    async def report_advertisement(self) -> None:
        """One advertisement seen by a scan: create the object, or update RSSI."""
        self._last_seen = asyncio.get_running_loop().time()
        self.cancel_expiry()
        if self._device_interface is None:
            self.current_rssi = self._jitter()
            await self.ensure_exported()
            return
        await self.fake.flow.acquire()
        self.current_rssi = self._jitter()
        changed = {"RSSI": Variant("n", self.current_rssi)}
        if self.adapter.wants_duplicates():
            if self.manufacturer_data:
                changed["ManufacturerData"] = Variant(
                    "a{qv}", {k: Variant("ay", v) for k, v in self.manufacturer_data.items()}
                )
            if self.service_data:
                changed["ServiceData"] = Variant(
                    "a{sv}", {k: Variant("ay", v) for k, v in self.service_data.items()}
                )
        self.fake.send(properties_changed(self.path, DEVICE_INTERFACE, changed))

    def _jitter(self) -> int:
        # Always a different value, so that bluetoothd-style change detection reports it.
        step = self.fake.random.choice((-3, -2, -1, 1, 2, 3))
        value = self.rssi + step
        if value == self.current_rssi:
            value = self.rssi - step
        return max(-127, min(20, value))

    def set_alias(self, alias: str) -> None:
        """Alias set over D-Bus; empty restores the name (or the dashed address)."""
        self.alias = alias or self.name or self.address.replace(":", "-")
        self._spawn_changed({"Alias": Variant("s", self.alias)})

    def set_flag(self, flag: Literal["trusted", "blocked"], value: bool) -> None:
        """Trusted/Blocked set over D-Bus."""
        setattr(self, flag, bool(value))
        self._spawn_changed({flag.capitalize(): Variant("b", bool(value))})
        if flag == "trusted" and value:
            self.cancel_expiry()

    def _spawn_changed(self, values: dict[str, Variant]) -> None:
        self.fake.spawn(
            self.fake.changed(self.path, DEVICE_INTERFACE, values), name=f"{self.address}-props"
        )

    # -- temporary devices (bluez src/device.c: temporary_timeout) ----------------------------

    def arm_expiry(self) -> None:
        """Start the TemporaryTimeout clock if this device may be forgotten."""
        timeout = self.fake.temporary_timeout
        if timeout is None or self._expiry is not None or not self.exported:
            return
        if not self.temporary or self.link_state != "idle":
            return
        loop = asyncio.get_running_loop()
        remaining = max(0.0, timeout - (loop.time() - self._last_seen))
        self._expiry = loop.call_later(remaining, self._expired)

    def cancel_expiry(self) -> None:
        """Stop the TemporaryTimeout clock."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        if self.adapter.sees(self) or not self.temporary or self.link_state != "idle":
            return
        self.fake.spawn(self.unexport(), name=f"{self.address}-expire")

    # -- connection (bluez src/device.c dev_connect / dev_disconnect / pair_device) -----------

    async def handle_connect(self) -> None:
        """Device1.Connect."""
        await self._connect()

    async def _may_connect(self) -> bool:
        """Check a connection attempt as bluetoothd and the controller would; False: linked."""
        if not self.adapter.powered:
            raise _error(BluezError.NOT_READY)
        if self._state() == "disconnecting":
            await self._idle.wait()
        state = self._state()
        if state == "connected":
            return False
        if state == "connecting":
            raise _error(BluezError.IN_PROGRESS)
        if self._connect_faults:
            await self._inject_connect_fault(*self._connect_faults.popleft())
        if not self.in_range:
            await asyncio.sleep(OUT_OF_RANGE_CONNECT_S)
            if not self.in_range:
                raise _error(BluezError.FAILED, HOST_DOWN)
        if self.adapter.busy_slots >= self.adapter.slots:
            raise _error(BluezError.FAILED, CONNECTION_LIMIT)
        if self.paired and not self.holds_keys:
            # bluetoothd connects a bonded device at security level medium: the link is
            # encrypted with the bond's keys at once, which a peer without them cannot do.
            raise _error(BluezError.FAILED, KEY_MISSING)
        return True

    def _state(self) -> LinkState:
        # A method, not the attribute: the state changes across awaits, which mypy's narrowing
        # of ``self.link_state`` does not know.
        return self.link_state

    async def _connect(self) -> None:
        if not await self._may_connect():
            return
        self._begin("connecting")
        self._abort_reason = None
        generation = self._link_generation
        peripheral_connected = False
        try:
            if self.connect_delay > 0:
                await asyncio.sleep(self.connect_delay)
            self._check_attempt(generation)
            try:
                self.peripheral.on_connect()
            except GattError:
                raise _error(BluezError.FAILED, ABORT_BY_REMOTE) from None
            peripheral_connected = True
            self.cancel_expiry()
            await self.fake.flow.acquire()
            self._check_attempt(generation)
            self.link_state = "connected"
            self.encrypted = self.paired and self.holds_keys
            self.fake.send(
                properties_changed(self.path, DEVICE_INTERFACE, {"Connected": Variant("b", True)})
            )
            await self._resolve_services(generation)
        except BaseException:
            reason = self._abort_reason or DisconnectReason.LOCAL
            if self._link_generation == generation:
                state = self._state()
                if state == "connected":
                    await self._teardown(reason)
                elif state == "connecting":
                    self._end()
                    if peripheral_connected:
                        self._call_peripheral("on_disconnect", reason)
            raise

    def _check_attempt(self, generation: int) -> None:
        if self._abort_reason is not None or self._link_generation != generation:
            raise _error(BluezError.FAILED, ABORT_BY_LOCAL)

    def _begin(self, state: LinkState) -> None:
        self.link_state = state
        self._idle.clear()

    async def _inject_connect_fault(self, name: str, message: str) -> None:
        if name == BluezError.FAILED and message == ABORT_BY_LOCAL:
            # bluetoothd has the link up for a moment and reports it (bleak's client.py waits
            # for Connected=False before it retries).
            self._begin("connecting")
            try:
                for value in (True, False):
                    await self.fake.changed(
                        self.path, DEVICE_INTERFACE, {"Connected": Variant("b", value)}
                    )
            finally:
                self._end()
        raise DBusError(name, message)

    async def _resolve_services(self, generation: int) -> None:
        for service in self._services:
            if service.hidden:
                continue
            await self._export_attribute(service, GattService1(service, self.path), generation)
            for characteristic in service.children:
                kind = (
                    GattNotifyCharacteristic1
                    if "notify" in characteristic.flags
                    else GattCharacteristic1
                )
                await self._export_attribute(
                    characteristic, kind(characteristic, self.fake), generation
                )
                for descriptor in characteristic.children:
                    await self._export_attribute(
                        descriptor, GattDescriptor1(descriptor), generation
                    )
        await self._start_battery_plugin(generation)
        discovered = tuple(s.uuid for s in self._services if s.primary)
        uuids = tuple(dict.fromkeys((*self.advertised_uuids, *discovered)))
        if uuids != self.uuids:
            # bluetoothd adds the discovered services to UUIDs before it resolves.
            await self.fake.flow.acquire()
            self._check_attempt(generation)
            self.uuids = uuids
            self.fake.send(
                properties_changed(
                    self.path, DEVICE_INTERFACE, {"UUIDs": Variant("as", list(uuids))}
                )
            )
        # GATT objects first, then ServicesResolved: bleak builds its service collection the
        # moment it sees ServicesResolved=True.
        await self.fake.flow.acquire()
        self._check_attempt(generation)
        self.services_resolved = True
        self.fake.send(
            properties_changed(
                self.path, DEVICE_INTERFACE, {"ServicesResolved": Variant("b", True)}
            )
        )

    async def _export_attribute(
        self, attribute: GattAttribute, interface: ServiceInterface, generation: int
    ) -> None:
        await self.fake.flow.acquire()
        self._check_attempt(generation)
        self.fake.announce_now(attribute.path, [interface])
        attribute.interface = interface

    async def _start_battery_plugin(self, generation: int) -> None:
        level = self._battery_level
        if level is None:
            return
        try:
            raw = self.peripheral.on_read(level.uuid)
        except GattError:
            _LOG.debug("%s: Battery Level unreadable; no Battery1", self.address)
            return
        self.battery_percentage = min(100, raw[0]) if raw else 0
        if level.notifies:
            level.sessions.add(_PLUGIN_SESSION)
            self._notify_changed(level, enabled=True)
        interface = Battery1(self)
        await self.fake.flow.acquire()
        self._check_attempt(generation)
        self.fake.announce_now(self.path, [interface])
        self._battery_interface = interface

    def _battery_changed(self, payload: bytes) -> bool:
        if not payload or self._battery_interface is None:
            return False
        percentage = min(100, payload[0])
        if percentage != self.battery_percentage:
            self.battery_percentage = percentage
            self.fake.send(
                properties_changed(
                    self.path, BATTERY_INTERFACE, {"Percentage": Variant("y", percentage)}
                )
            )
        return True

    async def handle_disconnect(self) -> None:
        """Device1.Disconnect: also cancels a connection attempt in progress."""
        if self.link_state == "idle":
            raise _error(BluezError.NOT_CONNECTED)
        await self.drop_link(DisconnectReason.LOCAL)

    async def _teardown(self, reason: DisconnectReason) -> None:
        self._begin("disconnecting")
        self._link_generation += 1
        try:
            if self.services_resolved:
                self.services_resolved = False
                await self.fake.changed(
                    self.path, DEVICE_INTERFACE, {"ServicesResolved": Variant("b", False)}
                )
            for service in self._services:
                for characteristic in service.children:
                    self._close_acquired(characteristic)
                    characteristic.sessions.clear()
                    if characteristic.cccd is not None:
                        characteristic.cccd.value = b"\x00\x00"
                    for descriptor in characteristic.children:
                        await self._withdraw_attribute(descriptor)
                    await self._withdraw_attribute(characteristic)
                await self._withdraw_attribute(service)
            if self._battery_interface is not None:
                await self.fake.flow.acquire()
                battery, self._battery_interface = self._battery_interface, None
                if battery is not None:
                    self.fake.withdraw_now(self.path, [battery])
            await self.fake.changed(self.path, DEVICE_INTERFACE, {"Connected": Variant("b", False)})
        finally:
            self._end()
            self._last_seen = asyncio.get_running_loop().time()
            self._call_peripheral("on_disconnect", reason)
            self.arm_expiry()

    def _end(self) -> None:
        self.link_state = "idle"
        self.encrypted = False
        self._idle.set()

    async def _withdraw_attribute(self, attribute: GattAttribute) -> None:
        if attribute.interface is None:
            return
        await self.fake.flow.acquire()
        interface, attribute.interface = attribute.interface, None
        if interface is not None:
            self.fake.withdraw_now(attribute.path, [interface])

    async def handle_pair(self) -> None:
        """Device1.Pair: connects first when needed and leaves the link up (bleak pair=True)."""
        if self.paired:
            raise _error(BluezError.ALREADY_EXISTS)
        if self._pairing:
            raise _error(BluezError.IN_PROGRESS)
        self._pairing = True
        self._cancel_pairing = False
        try:
            if not self.connected:
                await self._connect()
            if self._pair_faults:
                raise DBusError(*self._pair_faults.popleft())
            if self._cancel_pairing:
                raise _error(BluezError.AUTHENTICATION_CANCELED)
            if not self.connected:
                raise _error(BluezError.FAILED, ABORT_BY_REMOTE)
            if not self.bondable:
                # SMP "Pairing Not Supported" from the peer.
                raise _error(BluezError.AUTHENTICATION_FAILED)
            await self.fake.flow.acquire()
            self.paired = self.bonded = True
            # Just Works: both sides now hold the new keys, and the link is encrypted with them.
            self.holds_keys = self.encrypted = True
            self.cancel_expiry()
            self.fake.send(
                properties_changed(
                    self.path,
                    DEVICE_INTERFACE,
                    {"Paired": Variant("b", True), "Bonded": Variant("b", True)},
                )
            )
        finally:
            self._pairing = False

    def handle_cancel_pairing(self) -> None:
        """Device1.CancelPairing."""
        if not self._pairing:
            raise _error(BluezError.DOES_NOT_EXIST)
        self._cancel_pairing = True

    # -- GATT (bluez src/gatt-client.c) ------------------------------------------------------

    async def handle_read(self, attribute: GattAttribute, options: Mapping[str, Variant]) -> bytes:
        """ReadValue on a characteristic or descriptor."""
        self._check_linked()
        if attribute.kind == "descriptor":
            value = attribute.value
            if attribute.uuid != CCCD_UUID and not _READ_FLAGS.intersection(attribute.flags):
                raise DBusError(*gatt_error_reply(ATT_ERROR_READ_NOT_PERMITTED))
        else:
            if not _READ_FLAGS.intersection(attribute.flags):
                raise DBusError(*gatt_error_reply(ATT_ERROR_READ_NOT_PERMITTED))
            self._check_security(attribute.flags, "read")
            value = self._peripheral_read(attribute.uuid)
            if value != attribute.value:
                # bluetoothd stores what it read and announces it: a client with notifications
                # on sees a read as a notification too (bleak's start_notify docstring).
                await self.fake.flow.acquire()
                attribute.value = value
                self.fake.send(
                    properties_changed(
                        attribute.path, CHARACTERISTIC_INTERFACE, {"Value": Variant("ay", value)}
                    )
                )
        offset = int(options["offset"].value) if "offset" in options else 0
        if offset > len(value):
            raise _error(BluezError.INVALID_ARGUMENTS, "Invalid offset")
        return value[offset:]

    def _peripheral_read(self, char_uuid: str) -> bytes:
        try:
            value = bytes(self.peripheral.on_read(char_uuid))
        except GattError as exc:
            raise DBusError(*gatt_error_reply(exc.att_error)) from None
        if len(value) > _MAX_ATTRIBUTE_LENGTH:
            raise DBusError(*gatt_error_reply(ATT_ERROR_INVALID_ATTRIBUTE_VALUE_LENGTH))
        return value

    async def handle_write(
        self, attribute: GattAttribute, value: bytes, options: Mapping[str, Variant]
    ) -> None:
        """WriteValue on a characteristic or descriptor."""
        self._check_linked()
        if attribute.kind == "descriptor":
            if attribute.uuid == CCCD_UUID:
                # bluetoothd refuses: notifications are StartNotify/StopNotify's business.
                raise DBusError(*gatt_error_reply(ATT_ERROR_WRITE_NOT_PERMITTED))
            if "write" not in attribute.flags:
                raise DBusError(*gatt_error_reply(ATT_ERROR_WRITE_NOT_PERMITTED))
            attribute.value = value
            return
        kind = str(options["type"].value) if "type" in options else ""
        flags = attribute.flags
        if kind == "command":
            allowed = "write-without-response" in flags
            if len(value) > self.mtu - _ATT_HEADER:
                raise _error(BluezError.INVALID_ARGUMENTS)
        elif kind in ("request", "reliable"):
            allowed = bool(_WRITE_FLAGS.intersection(flags))
        elif not kind:
            if not _WRITE_FLAGS.intersection(flags) and "write-without-response" not in flags:
                raise _error(BluezError.NOT_SUPPORTED)
            allowed = True
        else:
            raise _error(BluezError.INVALID_ARGUMENTS)
        if not allowed:
            # bluetoothd sends what it was asked to; the peripheral answers with an ATT error.
            raise DBusError(*gatt_error_reply(ATT_ERROR_WRITE_NOT_PERMITTED))
        self._check_security(flags, "write")
        if len(value) > _MAX_ATTRIBUTE_LENGTH:
            raise DBusError(*gatt_error_reply(ATT_ERROR_INVALID_ATTRIBUTE_VALUE_LENGTH))
        try:
            self.peripheral.on_write(attribute.uuid, value)
        except GattError as exc:
            raise DBusError(*gatt_error_reply(exc.att_error)) from None

    def _check_linked(self) -> None:
        if self.link_state != "connected":
            raise _error(BluezError.NOT_CONNECTED)

    def _check_security(self, flags: tuple[str, ...], operation: str) -> None:
        """An access that needs encryption on a link not encrypted with the bond's keys.

        The peripheral answers Insufficient Authentication; bluetoothd relays it as
        ``org.bluez.Error.NotPermitted: Not paired`` (create_gatt_dbus_error in bluez
        src/gatt-client.c). A real bluetoothd first tries to raise the link's security, which
        pairs an unbonded device (Just Works); the emulator does not pair behind the client's
        back, so the gateway must not rely on it (it checks Paired before any access).
        """
        secured = {f for f in flags if f in _ENCRYPTED_FLAGS and f.endswith(operation)}
        if operation == "notify":
            secured |= {f for f in flags if f in _ENCRYPTED_FLAGS and f.endswith("indicate")}
            plain = False
        else:
            plain = operation in flags
        if secured and not plain and not self.encrypted:
            raise DBusError(*gatt_error_reply(ATT_ERROR_INSUFFICIENT_AUTHENTICATION))

    async def handle_start_notify(self, attribute: GattAttribute, sender: str) -> None:
        """StartNotify: one session per client; the CCCD is written for the first."""
        if self.link_state == "disconnecting":
            raise _error(BluezError.NOT_CONNECTED)
        if attribute.notify_socket is not None:
            raise _error(BluezError.NOT_PERMITTED, "Notify acquired")
        self._check_linked()
        if not attribute.notifies:
            raise _error(BluezError.NOT_SUPPORTED)
        self._check_security(attribute.flags, "notify")
        if sender in attribute.sessions:
            return
        first = not attribute.sessions
        attribute.sessions.add(sender)
        if first:
            try:
                self._notify_changed(attribute, enabled=True, raising=True)
            except GattError as exc:
                attribute.sessions.discard(sender)
                raise DBusError(*gatt_error_reply(exc.att_error)) from None
            await self.fake.changed(
                attribute.path, CHARACTERISTIC_INTERFACE, {"Notifying": Variant("b", True)}
            )

    def handle_acquire_notify(self, attribute: GattAttribute, sender: str) -> tuple[int, int]:
        """AcquireNotify: a SOCK_SEQPACKET pair; the client's end and the MTU are the reply.

        As gatt-client.c: Failed "Not connected" without a link, NotPermitted "Notify acquired"
        when a client holds it already, InProgress when StartNotify sessions exist,
        NotSupported without the ``notify`` flag. The CCCD is written; ``Notifying`` stays as it
        was and ``NotifyAcquired`` becomes true. Notifications then go to the socket, not to
        PropertiesChanged(Value) (:meth:`_send_acquired`). The client releases it by closing
        its end (bleak: stop_notify, disconnect, exit); a StopNotify from anyone also does.
        """
        if self.link_state != "connected":
            raise _error(BluezError.FAILED, "Not connected")
        if attribute.notify_socket is not None:
            raise _error(BluezError.NOT_PERMITTED, "Notify acquired")
        if attribute.sessions:
            raise _error(BluezError.IN_PROGRESS)
        if "notify" not in attribute.flags:
            raise _error(BluezError.NOT_SUPPORTED)
        self._check_security(attribute.flags, "notify")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        attribute.sessions.add(sender)
        attribute.notify_socket, attribute.notify_owner = ours, sender
        try:
            self._notify_changed(attribute, enabled=True, raising=True)
        except GattError as exc:
            attribute.sessions.discard(sender)
            attribute.notify_socket, attribute.notify_owner = None, ""
            ours.close()
            theirs.close()
            raise DBusError(*gatt_error_reply(exc.att_error)) from None
        asyncio.get_running_loop().add_reader(ours.fileno(), self._acquired_readable, attribute)
        fd = theirs.detach()
        self.fake.bus.close_after_send(fd)
        self._spawn_notify_acquired(attribute)
        return fd, self.mtu

    def _acquired_readable(self, attribute: GattAttribute) -> None:
        """The client's end hung up (or wrote, which a notify socket has no use for)."""
        sock = attribute.notify_socket
        if sock is None:
            return
        try:
            data = sock.recv(1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            _LOG.debug("%s: ignored %d bytes written to a notify socket", self.address, len(data))
            return
        self._release_acquired(attribute)

    def _close_acquired(self, attribute: GattAttribute) -> bool:
        """Close bluetoothd's end (the client sees a hang-up); True if one was open."""
        sock = attribute.notify_socket
        if sock is None:
            return False
        with contextlib.suppress(ValueError, RuntimeError):  # closed fd or closed loop
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        attribute.sessions.discard(attribute.notify_owner)
        attribute.notify_socket, attribute.notify_owner = None, ""
        return True

    def close_notify_sockets(self) -> None:
        """Emulator shutdown: close its ends of the AcquireNotify sockets, as the fds of an
        exiting bluetoothd close (the clients read end-of-file)."""
        for service in self._services:
            for characteristic in service.children:
                self._close_acquired(characteristic)

    def _release_acquired(self, attribute: GattAttribute) -> None:
        """destroy_sock: the lock ends; the CCCD is cleared if nobody else listens."""
        if not self._close_acquired(attribute) or self.link_state != "connected":
            return
        if not attribute.sessions:
            self._notify_changed(attribute, enabled=False)
        self._spawn_notify_acquired(attribute)

    def _spawn_notify_acquired(self, attribute: GattAttribute) -> None:
        value = attribute.notify_socket is not None
        self.fake.spawn(
            self.fake.changed(
                attribute.path, CHARACTERISTIC_INTERFACE, {"NotifyAcquired": Variant("b", value)}
            ),
            name=f"{self.address}-notify-acquired",
        )

    async def handle_stop_notify(self, attribute: GattAttribute, sender: str) -> None:
        """StopNotify: ends the caller's session; the CCCD is cleared with the last one.

        On an acquired characteristic it releases the socket, whoever calls (as bluetoothd).
        """
        if attribute.notify_socket is not None:
            self._release_acquired(attribute)
            return
        if sender not in attribute.sessions:
            raise _error(BluezError.FAILED, "No notify session started")
        await self._end_session(attribute, sender)

    async def _end_session(self, attribute: GattAttribute, sender: str) -> None:
        attribute.sessions.discard(sender)
        if attribute.sessions or self.link_state != "connected":
            return
        self._notify_changed(attribute, enabled=False)
        await self.fake.changed(
            attribute.path, CHARACTERISTIC_INTERFACE, {"Notifying": Variant("b", False)}
        )

    def client_left(self, sender: str) -> None:
        """A client left the bus: bluetoothd ends its notify sessions."""
        for service in self._services:
            for characteristic in service.children:
                if characteristic.notify_owner == sender:
                    self._release_acquired(characteristic)
                elif sender in characteristic.sessions:
                    self.fake.spawn(
                        self._end_session(characteristic, sender),
                        name=f"{self.address}-notify-cleanup",
                    )

    def _notify_changed(
        self, attribute: GattAttribute, *, enabled: bool, raising: bool = False
    ) -> None:
        if attribute.cccd is not None:
            notify = any(f.endswith("notify") for f in attribute.flags)
            attribute.cccd.value = (b"\x01\x00" if notify else b"\x02\x00") if enabled else b"\0\0"
        try:
            self.peripheral.on_notify_changed(attribute.uuid, enabled)
        except GattError:
            if raising:
                raise
            _LOG.debug("%s refused a CCCD write", self.address, exc_info=True)

    def _call_peripheral(self, method: str, *args: Any) -> None:
        try:
            getattr(self.peripheral, method)(*args)
        except Exception:  # noqa: BLE001 - a wearable's bug must not wedge the link state
            _LOG.exception("%s: peripheral %s failed", self.address, method)

    # -- GATT layout -------------------------------------------------------------------------

    def _layout(self, specs: Sequence[ServiceSpec]) -> list[GattAttribute]:
        """Assign ATT handles in declaration order and bluetoothd's object paths."""
        services: list[GattAttribute] = []
        handle = 1
        for spec in specs:
            hidden = spec.uuid == _GAP_SERVICE_UUID or (
                self.fake.battery_plugin and spec.uuid == gatt.BATTERY_SERVICE_UUID
            )
            service = GattAttribute(
                "service",
                self,
                spec.uuid,
                handle,
                f"{self.path}/service{handle:04x}",
                self.path,
                primary=spec.primary,
                hidden=hidden,
            )
            handle += 1
            for char_spec in spec.characteristics:
                service.children.append(self._layout_characteristic(service, char_spec, handle))
                handle = service.children[-1].handle + 2 + len(service.children[-1].children)
            services.append(service)
        if handle > 0xFFFF:
            raise ValueError("the GATT database does not fit in 16-bit handles")
        return services

    def _layout_characteristic(
        self, service: GattAttribute, spec: CharSpec, handle: int
    ) -> GattAttribute:
        path = f"{service.path}/char{handle:04x}"
        characteristic = GattAttribute(
            "characteristic",
            self,
            spec.uuid,
            handle,
            path,
            service.path,
            flags=spec.flags,
            hidden=service.hidden,
        )
        descriptor_handle = handle + 2  # declaration, value, then descriptors
        descriptors: list[tuple[str, bytes, tuple[str, ...]]] = []
        if spec.notifies:
            descriptors.append((CCCD_UUID, b"\x00\x00", ("read", "write")))
        descriptors.extend((d.uuid, d.value, d.flags) for d in spec.descriptors)
        for uuid, value, flags in descriptors:
            descriptor = GattAttribute(
                "descriptor",
                self,
                uuid,
                descriptor_handle,
                f"{path}/desc{descriptor_handle:04x}",
                path,
                flags=flags,
                value=value,
                hidden=service.hidden,
            )
            if uuid == CCCD_UUID:
                characteristic.cccd = descriptor
            characteristic.children.append(descriptor)
            descriptor_handle += 1
        return characteristic
