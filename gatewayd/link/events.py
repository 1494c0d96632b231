"""What the link layer hands to the rest of the gateway: one small frozen dataclass per event."""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.protocol.control import DeviceInfo
from gatewayd.protocol.heart_rate import HeartRateMeasurement
from gatewayd.protocol.messages import Message


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A message from a gatewayd wearable, delivered in sequence order, exactly once."""

    device_id: str
    message: Message
    #: Wall-clock time (Unix seconds) at which the last fragment arrived.
    received_at: float


@dataclass(frozen=True, slots=True)
class HeartRateReceived:
    """A standard Heart Rate Measurement from a strap or watch."""

    device_id: str
    measurement: HeartRateMeasurement
    received_at: float


@dataclass(frozen=True, slots=True)
class MessagesLost:
    """Messages ``first`` .. ``first + count - 1`` never arrived and could not be recovered."""

    device_id: str
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class DeviceRestarted:
    """The wearable rebooted (new boot id, or its numbering jumped back): ordering restarts."""

    device_id: str
    seq: int | None


@dataclass(frozen=True, slots=True)
class LinkUp:
    """Connected, subscribed and synchronised."""

    device_id: str
    adapter: str
    info: DeviceInfo | None
    mtu: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The connection ended; the link will reconnect unless the gateway is stopping."""

    device_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery Service level, percent."""

    device_id: str
    percent: int


LinkEvent = (
    FrameReceived
    | HeartRateReceived
    | MessagesLost
    | DeviceRestarted
    | LinkUp
    | LinkDown
    | BatteryLevel
)
