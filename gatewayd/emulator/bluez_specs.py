"""What an emulated peripheral is made of: GATT specs, the Peripheral protocol, BlueZ's error names.

Pure data and small helpers, no D-Bus: the virtual wearables are written against this module.
"""

from __future__ import annotations

import enum
import re
import uuid as uuid_module
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from gatewayd.protocol import gatt

__all__ = [
    "ATT_ERROR_INSUFFICIENT_AUTHENTICATION",
    "ATT_ERROR_INSUFFICIENT_AUTHORIZATION",
    "ATT_ERROR_INSUFFICIENT_ENCRYPTION",
    "ATT_ERROR_INVALID_ATTRIBUTE_VALUE_LENGTH",
    "ATT_ERROR_INVALID_OFFSET",
    "ATT_ERROR_READ_NOT_PERMITTED",
    "ATT_ERROR_REQUEST_NOT_SUPPORTED",
    "ATT_ERROR_UNLIKELY",
    "ATT_ERROR_WRITE_NOT_PERMITTED",
    "CCCD_UUID",
    "CHARACTERISTIC_FLAGS",
    "BluezError",
    "CharSpec",
    "DescriptorSpec",
    "DisconnectReason",
    "GattError",
    "Peripheral",
    "ServiceSpec",
    "StaticPeripheral",
    "battery_service",
    "gatt_error_reply",
    "normalize_uuid",
    "wearable_service",
]

_SIG_BASE: Final = "-0000-1000-8000-00805f9b34fb"
_SHORT_UUID = re.compile(r"^(?:0x)?([0-9a-fA-F]{4}|[0-9a-fA-F]{8})$")

#: Client Characteristic Configuration descriptor; BlueZ writes it for StartNotify/StopNotify.
CCCD_UUID: Final = "00002902-0000-1000-8000-00805f9b34fb"


class BluezError(enum.StrEnum):
    """D-Bus error names bluetoothd replies with (bluez src/error.c)."""

    FAILED = "org.bluez.Error.Failed"
    IN_PROGRESS = "org.bluez.Error.InProgress"
    NOT_READY = "org.bluez.Error.NotReady"
    NOT_CONNECTED = "org.bluez.Error.NotConnected"
    NOT_SUPPORTED = "org.bluez.Error.NotSupported"
    NOT_PERMITTED = "org.bluez.Error.NotPermitted"
    NOT_AUTHORIZED = "org.bluez.Error.NotAuthorized"
    INVALID_ARGUMENTS = "org.bluez.Error.InvalidArguments"
    DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
    ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
    AUTHENTICATION_FAILED = "org.bluez.Error.AuthenticationFailed"
    AUTHENTICATION_CANCELED = "org.bluez.Error.AuthenticationCanceled"


#: The message bluetoothd puts in the default reply for each error name (bluez src/error.c), used
#: when a fault is injected without a message.
DEFAULT_ERROR_MESSAGES: Final[Mapping[str, str]] = {
    BluezError.FAILED: "Operation failed",
    BluezError.IN_PROGRESS: "In Progress",
    BluezError.NOT_READY: "Resource Not Ready",
    BluezError.NOT_CONNECTED: "Not Connected",
    BluezError.NOT_SUPPORTED: "Operation is not supported",
    BluezError.NOT_PERMITTED: "Operation Not Permitted",
    BluezError.NOT_AUTHORIZED: "Operation Not Authorized",
    BluezError.INVALID_ARGUMENTS: "Invalid arguments in method call",
    BluezError.DOES_NOT_EXIST: "Does Not Exist",
    BluezError.ALREADY_EXISTS: "Already Exists",
    BluezError.AUTHENTICATION_FAILED: "Authentication Failed",
    BluezError.AUTHENTICATION_CANCELED: "Authentication Canceled",
}

# ATT error codes (Bluetooth Core Vol 3 Part F 3.4.1.1) a peripheral may answer with.
ATT_ERROR_READ_NOT_PERMITTED: Final = 0x02
ATT_ERROR_WRITE_NOT_PERMITTED: Final = 0x03
ATT_ERROR_INSUFFICIENT_AUTHENTICATION: Final = 0x05
ATT_ERROR_REQUEST_NOT_SUPPORTED: Final = 0x06
ATT_ERROR_INVALID_OFFSET: Final = 0x07
ATT_ERROR_INSUFFICIENT_AUTHORIZATION: Final = 0x08
ATT_ERROR_INSUFFICIENT_ENCRYPTION_KEY_SIZE: Final = 0x0C
ATT_ERROR_INVALID_ATTRIBUTE_VALUE_LENGTH: Final = 0x0D
ATT_ERROR_UNLIKELY: Final = 0x0E
ATT_ERROR_INSUFFICIENT_ENCRYPTION: Final = 0x0F

#: Flags BlueZ reports in GattCharacteristic1.Flags (bluez doc/org.bluez.GattCharacteristic.rst).
CHARACTERISTIC_FLAGS: Final = frozenset(
    {
        "broadcast",
        "read",
        "write-without-response",
        "write",
        "notify",
        "indicate",
        "authenticated-signed-writes",
        "extended-properties",
        "reliable-write",
        "writable-auxiliaries",
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
        "authorize",
    }
)
_DESCRIPTOR_FLAGS: Final = frozenset(
    {
        "read",
        "write",
        "encrypt-read",
        "encrypt-write",
        "encrypt-authenticated-read",
        "encrypt-authenticated-write",
        "secure-read",
        "secure-write",
        "authorize",
    }
)


def normalize_uuid(value: str | int) -> str:
    """Return the 128-bit lowercase form bleak reports: ``"180f"``/``0x180F`` → ``0000180f-…``."""
    if isinstance(value, int):
        return f"{value:08x}{_SIG_BASE}"
    text = value.strip()
    short = _SHORT_UUID.match(text)
    if short:
        return f"{int(short.group(1), 16):08x}{_SIG_BASE}"
    try:
        return str(uuid_module.UUID(text))
    except ValueError:
        raise ValueError(f"not a Bluetooth UUID: {value!r}") from None


class GattError(Exception):
    """Raised by a :class:`Peripheral` callback: the peripheral answers with an ATT error.

    The emulator turns it into the D-Bus error bluetoothd would send for that ATT code (see
    :func:`gatt_error_reply`), e.g. ``GattError(ATT_ERROR_WRITE_NOT_PERMITTED)`` becomes
    ``org.bluez.Error.NotPermitted: Write not permitted``, which bleak raises as
    ``BleakGATTProtocolError``; any other code becomes ``org.bluez.Error.Failed: Operation failed
    with ATT error: 0x..``.
    """

    def __init__(self, att_error: int = ATT_ERROR_UNLIKELY, detail: str = "") -> None:
        if not 0 <= att_error <= 0xFF:
            raise ValueError(f"ATT error codes are one byte, got {att_error}")
        self.att_error = att_error
        super().__init__(detail or f"ATT error 0x{att_error:02x}")


#: bluetoothd's D-Bus error for the ATT errors it singles out (``create_gatt_dbus_error()`` in
#: bluez src/gatt-client.c); bleak turns these back into BleakGATTProtocolError codes.
_GATT_ERROR_REPLIES: Final[Mapping[int, tuple[str, str]]] = {
    0: (BluezError.FAILED, "Operation failed"),
    ATT_ERROR_READ_NOT_PERMITTED: (BluezError.NOT_PERMITTED, "Read not permitted"),
    ATT_ERROR_WRITE_NOT_PERMITTED: (BluezError.NOT_PERMITTED, "Write not permitted"),
    ATT_ERROR_INSUFFICIENT_AUTHENTICATION: (BluezError.NOT_PERMITTED, "Not paired"),
    ATT_ERROR_INSUFFICIENT_ENCRYPTION: (BluezError.NOT_PERMITTED, "Not paired"),
    ATT_ERROR_INSUFFICIENT_ENCRYPTION_KEY_SIZE: (BluezError.NOT_PERMITTED, "Not paired"),
    ATT_ERROR_INVALID_OFFSET: (BluezError.INVALID_ARGUMENTS, "Invalid offset"),
    ATT_ERROR_INVALID_ATTRIBUTE_VALUE_LENGTH: (BluezError.INVALID_ARGUMENTS, "Invalid Length"),
    ATT_ERROR_INSUFFICIENT_AUTHORIZATION: (BluezError.NOT_AUTHORIZED, "Operation Not Authorized"),
    ATT_ERROR_REQUEST_NOT_SUPPORTED: (BluezError.NOT_SUPPORTED, "Operation is not supported"),
}


def gatt_error_reply(att_error: int) -> tuple[str, str]:
    """Return the (D-Bus error name, message) bluetoothd replies for an ATT error."""
    return _GATT_ERROR_REPLIES.get(
        att_error, (BluezError.FAILED, f"Operation failed with ATT error: 0x{att_error:02x}")
    )


class DisconnectReason(enum.StrEnum):
    """Why a link ended, as the peripheral learns it."""

    #: The central asked (Device1.Disconnect, Adapter1.RemoveDevice).
    LOCAL = "local"
    #: The peripheral ended the link.
    REMOTE = "remote"
    #: Supervision timeout: the radio link was lost (out of range, interference).
    TIMEOUT = "timeout"
    #: The central's adapter went away or was powered off.
    ADAPTER = "adapter"


@dataclass(frozen=True, slots=True)
class DescriptorSpec:
    """A descriptor other than the CCCD (which the emulator adds for notify/indicate)."""

    uuid: str
    value: bytes = b""
    flags: tuple[str, ...] = ("read",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", normalize_uuid(self.uuid))
        object.__setattr__(self, "value", bytes(self.value))
        unknown = set(self.flags) - _DESCRIPTOR_FLAGS
        if unknown:
            raise ValueError(f"unknown descriptor flags {sorted(unknown)}")
        if self.uuid == CCCD_UUID:
            raise ValueError("the emulator adds the CCCD of notify/indicate characteristics")


@dataclass(frozen=True, slots=True)
class CharSpec:
    """A characteristic: its UUID, its properties as BlueZ names them, extra descriptors."""

    uuid: str
    flags: tuple[str, ...]
    descriptors: tuple[DescriptorSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", normalize_uuid(self.uuid))
        object.__setattr__(self, "flags", tuple(self.flags))
        object.__setattr__(self, "descriptors", tuple(self.descriptors))
        unknown = set(self.flags) - CHARACTERISTIC_FLAGS
        if unknown:
            raise ValueError(f"unknown characteristic flags {sorted(unknown)}")
        if not self.flags:
            raise ValueError(f"characteristic {self.uuid} has no flags")

    @property
    def notifies(self) -> bool:
        """Whether it can notify or indicate (and so has a CCCD); encrypt-notify implies notify."""
        return any(f.endswith(("notify", "indicate")) for f in self.flags)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A GATT service as the peripheral's database holds it."""

    uuid: str
    characteristics: tuple[CharSpec, ...] = field(default_factory=tuple)
    primary: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", normalize_uuid(self.uuid))
        object.__setattr__(self, "characteristics", tuple(self.characteristics))


class Peripheral(Protocol):
    """What a virtual wearable implements; the emulator calls it from the event loop.

    Callbacks are synchronous and must be quick; start a task for anything slow. ``on_read`` and
    ``on_write`` may raise :class:`GattError` to answer with an ATT error. ``on_connect`` may raise
    it to refuse the link (the central sees ``le-connection-abort-by-remote``).
    """

    def on_connect(self) -> None:
        """A central connected (before services are resolved)."""

    def on_disconnect(self, reason: DisconnectReason) -> None:
        """The link ended. Notification subscriptions end with it (no on_notify_changed call)."""

    def on_read(self, char_uuid: str) -> bytes:
        """Return the value of a characteristic the central reads."""
        ...

    def on_write(self, char_uuid: str, data: bytes) -> None:
        """The central wrote ``data`` (with or without response)."""

    def on_notify_changed(self, char_uuid: str, enabled: bool) -> None:
        """The central enabled or disabled notifications (the CCCD was written)."""


class StaticPeripheral:
    """A :class:`Peripheral` with fixed read values that records what the central did.

    Enough for decoys, heart-rate straps in tests and the battery service; real virtual wearables
    implement :class:`Peripheral` themselves.
    """

    def __init__(self, values: Mapping[str, bytes] | None = None) -> None:
        self.values: dict[str, bytes] = {
            normalize_uuid(key): bytes(value) for key, value in (values or {}).items()
        }
        self.writes: list[tuple[str, bytes]] = []
        self.notify_enabled: set[str] = set()
        self.events: list[str] = []
        self.refuse_connect = False

    def on_connect(self) -> None:
        """Record the connection, or refuse it when ``refuse_connect`` is set."""
        self.events.append("connect")
        if self.refuse_connect:
            raise GattError(ATT_ERROR_UNLIKELY, "peripheral refuses connections")

    def on_disconnect(self, reason: DisconnectReason) -> None:
        """Record the disconnection and forget the CCCDs (no bond)."""
        self.events.append(f"disconnect:{reason}")
        self.notify_enabled.clear()

    def on_read(self, char_uuid: str) -> bytes:
        """Return the configured value, or answer Read Not Permitted."""
        try:
            return self.values[char_uuid]
        except KeyError:
            raise GattError(ATT_ERROR_READ_NOT_PERMITTED) from None

    def on_write(self, char_uuid: str, data: bytes) -> None:
        """Record the write."""
        self.writes.append((char_uuid, data))

    def on_notify_changed(self, char_uuid: str, enabled: bool) -> None:
        """Track which characteristics have notifications enabled."""
        if enabled:
            self.notify_enabled.add(char_uuid)
        else:
            self.notify_enabled.discard(char_uuid)


def battery_service(flags: Iterable[str] = ("read", "notify")) -> ServiceSpec:
    """The standard Battery Service (0x180F) with its Battery Level characteristic (0x2A19)."""
    return ServiceSpec(
        gatt.BATTERY_SERVICE_UUID,
        (CharSpec(gatt.BATTERY_LEVEL_CHAR_UUID, tuple(flags)),),
    )


def wearable_service(*, encrypted: bool = True) -> ServiceSpec:
    """The gatewayd wearable service of docs/protocol.md §1: data, control and info.

    Every access needs a link encrypted with the bond's keys (docs/pairing.md); ``encrypted``
    False gives the open variant of older firmware.
    """
    if not encrypted:
        flags: tuple[tuple[str, ...], ...] = (("notify",), ("write",), ("read",))
    else:
        flags = (("notify", "encrypt-notify"), ("encrypt-write",), ("encrypt-read",))
    return ServiceSpec(
        gatt.SERVICE_UUID,
        (
            CharSpec(gatt.DATA_CHAR_UUID, flags[0]),
            CharSpec(gatt.CONTROL_CHAR_UUID, flags[1]),
            CharSpec(gatt.INFO_CHAR_UUID, flags[2]),
        ),
    )
