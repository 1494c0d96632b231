"""BLE emulator: a fake BlueZ on a private D-Bus that unmodified bleak talks to (docs/emulator.md).

:class:`PrivateBus` runs the bus, :class:`FakeBluez` plays bluetoothd on it; docs/emulator.md
explains how to point a gateway at it.
"""

from gatewayd.emulator.bluez import (
    ABORT_BY_LOCAL,
    BLUEZ_VERSION,
    CONNECTION_LIMIT,
    BluezError,
    CharSpec,
    DescriptorSpec,
    DisconnectReason,
    FakeAdapter,
    FakeBluez,
    FakeDevice,
    GattError,
    Peripheral,
    ServiceSpec,
    StaticPeripheral,
    battery_service,
    install_bluetoothctl_shim,
    normalize_uuid,
    wearable_service,
)
from gatewayd.emulator.bus import DBUS_SYSTEM_BUS_ADDRESS, PrivateBus
from gatewayd.errors import EmulatorError

__all__ = [
    "ABORT_BY_LOCAL",
    "BLUEZ_VERSION",
    "CONNECTION_LIMIT",
    "DBUS_SYSTEM_BUS_ADDRESS",
    "BluezError",
    "CharSpec",
    "DescriptorSpec",
    "DisconnectReason",
    "EmulatorError",
    "FakeAdapter",
    "FakeBluez",
    "FakeDevice",
    "GattError",
    "Peripheral",
    "PrivateBus",
    "ServiceSpec",
    "StaticPeripheral",
    "battery_service",
    "install_bluetoothctl_shim",
    "normalize_uuid",
    "wearable_service",
]
