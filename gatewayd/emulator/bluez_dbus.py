"""The D-Bus face of the fake BlueZ: dbus-fast service interfaces named and typed like bluetoothd's.

Each class is a thin shell: property getters read the model objects of
:mod:`gatewayd.emulator.bluez` and methods call into them; the model raises ``DBusError`` with
bluetoothd's error names. D-Bus member names are CamelCase by specification, hence the file-wide
N802 exemption. This module deliberately has no ``from __future__ import annotations``: dbus-fast
reads the D-Bus signatures from evaluated annotations, and a deferred ``-> None`` breaks it.
"""

# ruff: noqa: N802

import asyncio
import contextlib
import contextvars
import functools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Final

from dbus_fast import DBusError, Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusByte,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt32,
)
from dbus_fast.constants import ErrorType, PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from gatewayd.emulator.bluez_specs import BluezError

if TYPE_CHECKING:
    from gatewayd.emulator.bluez import FakeAdapter, FakeBluez, FakeDevice, GattAttribute

__all__ = [
    "ADAPTER_INTERFACE",
    "AGENT_MANAGER_INTERFACE",
    "BATTERY_INTERFACE",
    "CALLER",
    "CHARACTERISTIC_INTERFACE",
    "DESCRIPTOR_INTERFACE",
    "DEVICE_INTERFACE",
    "DISCOVERY_FILTERS",
    "OBJECT_MANAGER_INTERFACE",
    "PROPERTIES_INTERFACE",
    "SERVICE_INTERFACE",
    "Adapter1",
    "AgentManager1",
    "Battery1",
    "Device1",
    "EmulatorBus",
    "GattCharacteristic1",
    "GattDescriptor1",
    "GattNotifyCharacteristic1",
    "GattService1",
    "device_interface",
    "interfaces_added",
    "interfaces_removed",
    "properties_changed",
    "properties_of",
]

OBJECT_MANAGER_INTERFACE: Final = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_INTERFACE: Final = "org.freedesktop.DBus.Properties"
AGENT_MANAGER_INTERFACE: Final = "org.bluez.AgentManager1"
ADAPTER_INTERFACE: Final = "org.bluez.Adapter1"
DEVICE_INTERFACE: Final = "org.bluez.Device1"
BATTERY_INTERFACE: Final = "org.bluez.Battery1"
SERVICE_INTERFACE: Final = "org.bluez.GattService1"
CHARACTERISTIC_INTERFACE: Final = "org.bluez.GattCharacteristic1"
DESCRIPTOR_INTERFACE: Final = "org.bluez.GattDescriptor1"

#: The unique bus name of the client whose method call is being dispatched. Set by the emulator's
#: message handler, which dbus-fast runs before dispatching each call in the same context; a
#: coroutine method's task copies the context when it is created, so it sees the right caller too.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("bluez_caller", default="")

_Bytes = Annotated[bytes, DBusSignature("ay")]
_Strings = Annotated[list[str], DBusSignature("as")]
_Paths = Annotated[list[str], DBusSignature("ao")]
_Options = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
_ManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
_FdAndMtu = Annotated[tuple[int, int], DBusSignature("hq")]

#: The SetDiscoveryFilter keys bluetoothd accepts (GetDiscoveryFilters).
DISCOVERY_FILTERS: Final = (
    "UUIDs",
    "RSSI",
    "Pathloss",
    "Transport",
    "DuplicateData",
    "Discoverable",
    "Pattern",
)

_OPTIONAL_DEVICE_PROPERTIES: Final = {
    "Name": "s",
    "TxPower": "n",
    "ManufacturerData": "a{qv}",
    "ServiceData": "a{sv}",
}


class EmulatorBus(MessageBus):
    """A dbus-fast bus that leaves the ObjectManager signals to the emulator and passes file
    descriptors (AcquireNotify's socket).

    dbus-fast's ``export()`` announces each interface with an ``InterfacesAdded`` signal sent from
    the object's own path. bluetoothd's ObjectManager lives at ``/`` and its signals come from
    there, which clients that match on ``path='/'`` rely on. The emulator sends them itself (from
    ``/``, paced by its flow control), so these two dbus-fast hooks do nothing here.
    tests/test_bleak_canary.py pins that dbus-fast still calls them from export/unexport.

    A method that hands the caller a file descriptor registers it with :meth:`close_after_send`:
    the emulator's copy is closed once the reply carrying it has been written (dbus-fast writes
    it later when the socket is busy, and never closes it), as bluetoothd closes its end of the
    pair right after queueing the reply. Until then the peer never sees a hang-up.
    """

    def __init__(self, bus_address: str) -> None:
        super().__init__(bus_address=bus_address, negotiate_unix_fd=True)
        self._close_after_send: set[int] = set()

    def close_after_send(self, fd: int) -> None:
        """Close ``fd`` once the message that carries it is written (or the bus fails)."""
        self._close_after_send.add(fd)

    def send(self, msg: Message) -> "asyncio.Future[None]":  # type: ignore[override]
        future: asyncio.Future[None] = super().send(msg)
        owned = [fd for fd in msg.unix_fds if fd in self._close_after_send]
        if owned:
            self._close_after_send.difference_update(owned)
            future.add_done_callback(functools.partial(_close_fds, owned))
        return future

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        return None

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        return None


def _close_fds(fds: list[int], _future: "asyncio.Future[None]") -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # already closed: nothing left to release
            os.close(fd)


def properties_of(interface: ServiceInterface) -> dict[str, Variant]:
    """Return the current readable properties of an exported interface, as D-Bus variants."""
    return {
        prop.name: Variant(prop.signature, getattr(interface, prop.name))
        for prop in interface.introspect().properties
        if prop.access.readable()
    }


def _caller() -> str:
    return CALLER.get()


def _failed(name: str, message: str) -> DBusError:
    return DBusError(name, message)


class AgentManager1(ServiceInterface):
    """``/org/bluez``: pairing agents. Registrations are kept; Just Works pairing needs none."""

    _CAPABILITIES: Final = frozenset(
        {"", "DisplayOnly", "DisplayYesNo", "KeyboardOnly", "NoInputNoOutput", "KeyboardDisplay"}
    )

    def __init__(self) -> None:
        super().__init__(AGENT_MANAGER_INTERFACE)
        self.agents: dict[str, tuple[str, str]] = {}
        self.default_agent: str | None = None

    @dbus_method()
    def RegisterAgent(self, agent: DBusObjectPath, capability: DBusStr) -> None:
        if capability not in self._CAPABILITIES:
            raise _failed(BluezError.INVALID_ARGUMENTS, "Invalid arguments in method call")
        sender = _caller()
        if sender in self.agents:
            raise _failed(BluezError.ALREADY_EXISTS, "Already Exists")
        self.agents[sender] = (agent, capability or "KeyboardDisplay")

    @dbus_method()
    def UnregisterAgent(self, agent: DBusObjectPath) -> None:
        sender = _caller()
        if self.agents.get(sender, ("",))[0] != agent:
            raise _failed(BluezError.DOES_NOT_EXIST, "Does Not Exist")
        del self.agents[sender]
        if self.default_agent == sender:
            self.default_agent = None

    @dbus_method()
    def RequestDefaultAgent(self, agent: DBusObjectPath) -> None:
        sender = _caller()
        if self.agents.get(sender, ("",))[0] != agent:
            raise _failed(BluezError.DOES_NOT_EXIST, "Does Not Exist")
        self.default_agent = sender

    def forget(self, sender: str) -> None:
        """Drop the agent of a client that left the bus."""
        self.agents.pop(sender, None)
        if self.default_agent == sender:
            self.default_agent = None


class Adapter1(ServiceInterface):
    """``/org/bluez/hciN``."""

    def __init__(self, adapter: "FakeAdapter") -> None:
        super().__init__(ADAPTER_INTERFACE)
        self._adapter = adapter

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self._adapter.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._adapter.system_name

    @dbus_property(access=PropertyAccess.READWRITE)
    def Alias(self) -> DBusStr:
        return self._adapter.alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self._adapter.set_alias(value)

    @dbus_property(access=PropertyAccess.READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property(access=PropertyAccess.READWRITE)
    def Powered(self) -> DBusBool:
        return self._adapter.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBusBool) -> None:
        self._adapter.request_powered(value)

    @dbus_property(access=PropertyAccess.READ)
    def PowerState(self) -> DBusStr:
        return "on" if self._adapter.powered else "off"

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def DiscoverableTimeout(self) -> DBusUInt32:
        return 180

    @dbus_property(access=PropertyAccess.READ)
    def Pairable(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def PairableTimeout(self) -> DBusUInt32:
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return self._adapter.discovering

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> _Strings:
        return list(self._adapter.local_uuids)

    @dbus_property(access=PropertyAccess.READ)
    def Modalias(self) -> DBusStr:
        return self._adapter.modalias

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> _Strings:
        return ["central", "peripheral"]

    @dbus_method()
    def StartDiscovery(self) -> None:
        self._adapter.start_discovery(_caller())

    @dbus_method()
    def StopDiscovery(self) -> None:
        self._adapter.stop_discovery(_caller())

    @dbus_method()
    def SetDiscoveryFilter(self, properties: _Options) -> None:
        self._adapter.set_discovery_filter(_caller(), properties)

    @dbus_method()
    def GetDiscoveryFilters(self) -> _Strings:
        return list(DISCOVERY_FILTERS)

    @dbus_method()
    async def RemoveDevice(self, device: DBusObjectPath) -> None:
        await self._adapter.remove_device_object(device)


class Device1(ServiceInterface):
    """``/org/bluez/hciN/dev_XX_XX_XX_XX_XX_XX``.

    Use :func:`device_interface`: it hides the optional properties a device does not have, as
    bluetoothd does (a device without a name has no ``Name``; bleak then reports ``None``).
    """

    def __init__(self, device: "FakeDevice") -> None:
        super().__init__(DEVICE_INTERFACE)
        self._device = device

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self._device.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return self._device.address_type

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._device.name or ""

    @dbus_property(access=PropertyAccess.READWRITE)
    def Alias(self) -> DBusStr:
        return self._device.alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self._device.set_alias(value)

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return self._device.paired

    @dbus_property(access=PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return self._device.bonded

    @dbus_property(access=PropertyAccess.READWRITE)
    def Trusted(self) -> DBusBool:
        return self._device.trusted

    @Trusted.setter  # type: ignore[no-redef]
    def Trusted(self, value: DBusBool) -> None:
        self._device.set_flag("trusted", value)

    @dbus_property(access=PropertyAccess.READWRITE)
    def Blocked(self) -> DBusBool:
        return self._device.blocked

    @Blocked.setter  # type: ignore[no-redef]
    def Blocked(self, value: DBusBool) -> None:
        self._device.set_flag("blocked", value)

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self._device.current_rssi

    @dbus_property(access=PropertyAccess.READ)
    def TxPower(self) -> DBusInt16:
        return self._device.tx_power or 0

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return self._device.connected

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> _Strings:
        return list(self._device.uuids)

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return self._device.adapter.path

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> _ManufacturerData:
        return {
            company: Variant("ay", data) for company, data in self._device.manufacturer_data.items()
        }

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> _Options:
        return {uuid: Variant("ay", data) for uuid, data in self._device.service_data.items()}

    @dbus_property(access=PropertyAccess.READ)
    def AdvertisingFlags(self) -> _Bytes:
        # LE General Discoverable, BR/EDR Not Supported: what a wearable advertises.
        return b"\x06"

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return self._device.services_resolved

    @dbus_method()
    async def Connect(self) -> None:
        await self._device.handle_connect()

    @dbus_method()
    async def Disconnect(self) -> None:
        await self._device.handle_disconnect()

    @dbus_method()
    async def Pair(self) -> None:
        await self._device.handle_pair()

    @dbus_method()
    def CancelPairing(self) -> None:
        self._device.handle_cancel_pairing()

    @dbus_method()
    def ConnectProfile(self, uuid: DBusStr) -> None:
        raise _failed(BluezError.NOT_SUPPORTED, "Operation is not supported")

    @dbus_method()
    def DisconnectProfile(self, uuid: DBusStr) -> None:
        raise _failed(BluezError.NOT_SUPPORTED, "Operation is not supported")


def _absent_property(name: str, signature: str) -> Any:
    def getter(self: ServiceInterface) -> Any:
        raise DBusError(ErrorType.UNKNOWN_PROPERTY, f"No such property '{name}'")

    getter.__name__ = name
    getter.__qualname__ = f"Device1.{name}"
    getter.__annotations__ = {"return": signature}
    return dbus_property(access=PropertyAccess.READ, disabled=True)(getter)


@functools.cache
def _device_class(absent: frozenset[str]) -> type[Device1]:
    if not absent:
        return Device1
    members = {name: _absent_property(name, _OPTIONAL_DEVICE_PROPERTIES[name]) for name in absent}
    return type(f"Device1Without{''.join(sorted(absent))}", (Device1,), members)


def device_interface(device: "FakeDevice", absent: Iterable[str]) -> Device1:
    """Return a Device1 for ``device`` without the optional properties named in ``absent``."""
    unknown = set(absent) - set(_OPTIONAL_DEVICE_PROPERTIES)
    if unknown:
        raise ValueError(f"not optional Device1 properties: {sorted(unknown)}")
    return _device_class(frozenset(absent))(device)


class Battery1(ServiceInterface):
    """What bluetoothd's battery plugin exports on the device instead of the Battery Service."""

    def __init__(self, device: "FakeDevice") -> None:
        super().__init__(BATTERY_INTERFACE)
        self._device = device

    @dbus_property(access=PropertyAccess.READ)
    def Percentage(self) -> DBusByte:
        return self._device.battery_percentage

    @dbus_property(access=PropertyAccess.READ)
    def Source(self) -> DBusStr:
        return "GATT Battery Service"


class GattService1(ServiceInterface):
    """``…/serviceXXXX``; XXXX is the service's first ATT handle."""

    def __init__(self, attribute: "GattAttribute", device_path: str) -> None:
        super().__init__(SERVICE_INTERFACE)
        self._attribute = attribute
        self._device_path = device_path

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._attribute.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return self._device_path

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return self._attribute.primary

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> _Paths:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self._attribute.handle


class GattCharacteristic1(ServiceInterface):
    """``…/serviceXXXX/charYYYY``; YYYY is the characteristic declaration's handle.

    A characteristic without the ``notify`` flag: no ``NotifyAcquired`` property (bluetoothd
    exports it only with that flag), so AcquireNotify answers NotSupported. No ``WriteAcquired``
    either: AcquireWrite is not implemented and answers NotSupported.
    """

    def __init__(self, attribute: "GattAttribute", fake: "FakeBluez") -> None:
        super().__init__(CHARACTERISTIC_INTERFACE)
        self._attribute = attribute
        self._fake = fake

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._attribute.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self._attribute.parent_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> _Bytes:
        return self._attribute.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return bool(self._attribute.sessions)

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> _Strings:
        return list(self._attribute.flags)

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self._attribute.handle

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return self._attribute.device.mtu

    @dbus_method()
    async def ReadValue(self, options: _Options) -> _Bytes:
        return await self._attribute.device.handle_read(self._attribute, options)

    @dbus_method()
    async def WriteValue(self, value: _Bytes, options: _Options) -> None:
        await self._attribute.device.handle_write(self._attribute, bytes(value), options)

    @dbus_method()
    async def StartNotify(self) -> None:
        await self._attribute.device.handle_start_notify(self._attribute, _caller())

    @dbus_method()
    async def StopNotify(self) -> None:
        await self._attribute.device.handle_stop_notify(self._attribute, _caller())

    @dbus_method()
    def AcquireWrite(self, options: _Options) -> _FdAndMtu:
        raise _failed(BluezError.NOT_SUPPORTED, "Operation is not supported")

    @dbus_method()
    def AcquireNotify(self, options: _Options) -> _FdAndMtu:
        return self._attribute.device.handle_acquire_notify(self._attribute, _caller())


class GattNotifyCharacteristic1(GattCharacteristic1):
    """A characteristic with the ``notify`` flag: bluetoothd adds ``NotifyAcquired``.

    bleak takes AcquireNotify (a socket per characteristic, one datagram per notification,
    no D-Bus message) when the caller passes ``bluez={"use_start_notify": False}`` and this
    property exists; otherwise StartNotify and PropertiesChanged(Value).
    """

    @dbus_property(access=PropertyAccess.READ)
    def NotifyAcquired(self) -> DBusBool:
        return self._attribute.notify_socket is not None


class GattDescriptor1(ServiceInterface):
    """``…/charYYYY/descZZZZ``; ZZZZ is the descriptor's handle."""

    def __init__(self, attribute: "GattAttribute") -> None:
        super().__init__(DESCRIPTOR_INTERFACE)
        self._attribute = attribute

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._attribute.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> DBusObjectPath:
        return self._attribute.parent_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> _Bytes:
        return self._attribute.value

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> _Strings:
        return list(self._attribute.flags)

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self._attribute.handle

    @dbus_method()
    async def ReadValue(self, options: _Options) -> _Bytes:
        return await self._attribute.device.handle_read(self._attribute, options)

    @dbus_method()
    async def WriteValue(self, value: _Bytes, options: _Options) -> None:
        await self._attribute.device.handle_write(self._attribute, bytes(value), options)


def interfaces_added(path: str, interfaces: Iterable[ServiceInterface]) -> Message:
    """Build ObjectManager.InterfacesAdded from ``/`` as bluetoothd sends it."""
    body = {interface.name: properties_of(interface) for interface in interfaces}
    return Message.new_signal(
        path="/",
        interface=OBJECT_MANAGER_INTERFACE,
        member="InterfacesAdded",
        signature="oa{sa{sv}}",
        body=[path, body],
    )


def interfaces_removed(path: str, names: Iterable[str]) -> Message:
    """Build ObjectManager.InterfacesRemoved from ``/`` as bluetoothd sends it."""
    return Message.new_signal(
        path="/",
        interface=OBJECT_MANAGER_INTERFACE,
        member="InterfacesRemoved",
        signature="oas",
        body=[path, list(names)],
    )


def properties_changed(
    path: str, interface: str, changed: dict[str, Variant], invalidated: Iterable[str] = ()
) -> Message:
    """Build org.freedesktop.DBus.Properties.PropertiesChanged for ``path``."""
    return Message.new_signal(
        path=path,
        interface=PROPERTIES_INTERFACE,
        member="PropertiesChanged",
        signature="sa{sv}as",
        body=[interface, changed, list(invalidated)],
    )
