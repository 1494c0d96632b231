"""Reconnect delays: capped exponential backoff, its base chosen by the kind of failure.

The error classes and their base delays follow bleak-retry-connector's calculate_backoff_time
(the knowledge of which BlueZ errors are transient comes from there); see docs/decisions.md for
why we keep this small function rather than the dependency.
"""

from __future__ import annotations

import asyncio
import random
from enum import Enum
from typing import Final

from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError

from gatewayd.backoff import capped_backoff


class FailureKind(Enum):
    """Why a connection attempt (or a connection) ended."""

    #: BlueZ is already connecting this device, or the link dropped during setup: retry soon.
    TRANSIENT = "transient"
    #: The adapter has no free connection slot (or the controller aborted for lack of one).
    OUT_OF_SLOTS = "out_of_slots"
    #: The device is not (or no longer) visible to this adapter.
    NOT_FOUND = "not_found"
    #: The attempt hit its safety timeout.
    TIMEOUT = "timeout"
    #: The device answered with something it should not (bad info, rejected control write).
    PROTOCOL = "protocol"
    #: A connection that worked and then ended (link loss, device turned off).
    DISCONNECTED = "disconnected"
    #: The device at the address is not the bonded one (or not bonded): DeviceUntrusted.
    UNTRUSTED = "untrusted"
    #: The system D-Bus refused bleak another connection (buslimit.py): the next attempt waits
    #: for its turn there, this delay is only the pause before queueing again.
    BUS_LIMIT = "bus_limit"
    OTHER = "other"


#: Base delay in seconds per kind; the n-th consecutive failure waits base * 1.8**(n-1), capped.
BASE_DELAY_S: Final[dict[FailureKind, float]] = {
    FailureKind.TRANSIENT: 0.25,
    FailureKind.OUT_OF_SLOTS: 4.0,
    FailureKind.NOT_FOUND: 2.0,
    FailureKind.TIMEOUT: 1.0,
    FailureKind.PROTOCOL: 5.0,
    FailureKind.DISCONNECTED: 0.1,
    FailureKind.UNTRUSTED: 30.0,
    FailureKind.BUS_LIMIT: 1.0,
    FailureKind.OTHER: 1.0,
}

_OUT_OF_SLOTS_TEXT: Final = ("available connection", "connection slot", "connection-limit")
_TRANSIENT_TEXT: Final = (
    "InProgress",
    "le-connection-abort-by-local",
    "br-connection-canceled",
    "Operation already in progress",
)


def classify(exc: BaseException) -> FailureKind:  # noqa: PLR0911 - one return per class
    """Map an exception from a connection attempt to the kind of failure it was."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, BleakDeviceNotFoundError):
        return FailureKind.NOT_FOUND
    text = str(exc)
    if isinstance(exc, BleakDBusError):
        text = f"{exc.dbus_error} {exc.dbus_error_details or ''}"
        if exc.dbus_error == "org.freedesktop.DBus.Error.UnknownObject":
            return FailureKind.NOT_FOUND
    if isinstance(exc, BleakError) and text.startswith("device '") and text.endswith("not found"):
        # bleak's manager: BleakError("device '/org/bluez/hci0/dev_..' not found") when BlueZ
        # dropped the object (its 30 s TemporaryTimeout for unpaired devices).
        return FailureKind.NOT_FOUND
    if any(t in text for t in _OUT_OF_SLOTS_TEXT):
        return FailureKind.OUT_OF_SLOTS
    if any(t in text for t in _TRANSIENT_TEXT):
        return FailureKind.TRANSIENT
    if isinstance(exc, BleakError | EOFError | BrokenPipeError | ConnectionError):
        return FailureKind.TRANSIENT if "Disconnected" in text else FailureKind.OTHER
    return FailureKind.OTHER


def backoff_delay(
    kind: FailureKind, attempt: int, *, rng: random.Random | None = None, jitter: float = 0.1
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` consecutive failures.

    With ``rng``, up to ``jitter`` (a fraction) is added so that many devices failing together
    do not retry in lockstep.
    """
    return capped_backoff(BASE_DELAY_S[kind], attempt, rng=rng, jitter=jitter)
