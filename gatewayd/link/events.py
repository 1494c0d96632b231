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
    #: The boot id of the numbering ``message.seq`` belongs to (from the info characteristic);
    #: with ``message.seq + 1`` it is the resume point to persist (:class:`ResumePoint`).
    boot_id: int | None = None


@dataclass(frozen=True, slots=True)
class HeartRateReceived:
    """A standard Heart Rate Measurement from a strap or watch."""

    device_id: str
    measurement: HeartRateMeasurement
    received_at: float


@dataclass(frozen=True, slots=True)
class MessagesLost:
    """Messages ``first`` .. ``first + count - 1`` never arrived and could not be recovered.

    ``cause`` says where they were lost: ``"gap"`` (never received, resend gave up),
    ``"resume"`` (produced while the gateway was down, no longer in the wearable's ring) or
    ``"queue_full"`` (received, but the consumer of :class:`~gatewayd.link.queue.EventQueue` did
    not keep up). Heart-rate measurements have no numbers: their losses have ``first`` -1.
    """

    device_id: str
    first: int
    count: int
    cause: str = "gap"


@dataclass(frozen=True, slots=True)
class SequenceJump:
    """The numbering jumped further ahead than the device could have produced (docs/protocol.md).

    Ordering resynchronised at ``got``; the numbers skipped are not reported as lost. ``bound``
    is how far ahead was plausible (elapsed time x max message rate + slack).
    """

    device_id: str
    expected: int
    got: int
    bound: int


@dataclass(frozen=True, slots=True)
class DeviceUntrusted:
    """The device at the paired address cannot be trusted; none of its data is delivered.

    ``reason`` is one of :data:`UNTRUST_REASONS`; ``detail`` is for people. The link backs off
    and tries again; for ``identity_changed`` it stops until the device is paired again
    (docs/pairing.md).
    """

    device_id: str
    reason: str
    detail: str


#: ``not_bonded``: BlueZ holds no bond with the address (and the device is not allowed
#: unbonded). ``bond_rejected``: the link could not be encrypted with the bond's keys: an
#: impostor, or a device that lost its bond. ``identity_changed``: the device's hardware profile
#: changed, or its boot id changed while its numbering went on instead of restarting.
UNTRUST_REASONS = ("not_bonded", "bond_rejected", "identity_changed")


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
class DeviceRemoved:
    """The device was taken off the paired list (``renamed_to`` None) or renamed while the
    gateway ran: its link has stopped, and nothing more comes under ``device_id``."""

    device_id: str
    renamed_to: str | None = None


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery Service level, percent."""

    device_id: str
    percent: int


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a device's stream stopped: the next seq expected within boot ``boot_id``.

    Persisted by the consumer from each :class:`FrameReceived` (``boot_id``, ``seq + 1``,
    ``received_at``) and handed back at start, so a restarted gateway asks the wearable's ring
    for what it missed. ``heard_at`` (Unix seconds) bounds how far ahead the device may be;
    without it a day is assumed.
    """

    boot_id: int
    next_seq: int
    heard_at: float | None = None


LinkEvent = (
    FrameReceived
    | HeartRateReceived
    | MessagesLost
    | DeviceRestarted
    | SequenceJump
    | DeviceUntrusted
    | LinkUp
    | LinkDown
    | DeviceRemoved
    | BatteryLevel
)
