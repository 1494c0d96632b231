"""Broker reconnect delays: capped exponential backoff, its base chosen by the kind of failure.

Same shape as gatewayd.link.backoff (aioesphomeapi's 1.8**tries, capped; one pure function with
a base per error class, after bleak-retry-connector's calculate_backoff_time).
"""

from __future__ import annotations

import asyncio
import random
from enum import Enum
from typing import Final

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from gatewayd.backoff import GROWTH, MAX_DELAY_S, capped_backoff

__all__ = ["BASE_DELAY_S", "GROWTH", "MAX_DELAY_S", "MqttFailure", "backoff_delay", "classify"]


class MqttFailure(Enum):
    """Why a broker connection attempt (or a connection) ended."""

    #: The broker refused our credentials or client id: retry slowly, someone must fix it.
    REFUSED = "refused"
    #: Nothing listens there, or the network is down (broker restarting, Wi-Fi gone).
    UNREACHABLE = "unreachable"
    #: An attempt or an operation hit its safety timeout.
    TIMEOUT = "timeout"
    #: A connection that worked and then dropped.
    LOST = "lost"
    OTHER = "other"


#: Base delay in seconds per kind; the n-th consecutive failure waits base * 1.8**(n-1), capped.
BASE_DELAY_S: Final[dict[MqttFailure, float]] = {
    MqttFailure.REFUSED: 15.0,
    MqttFailure.UNREACHABLE: 1.0,
    MqttFailure.TIMEOUT: 2.0,
    MqttFailure.LOST: 0.5,
    MqttFailure.OTHER: 2.0,
}

#: CONNACK codes that mean "your credentials or client id are wrong" (3.1.1 return codes 2, 4,
#: 5; MQTT 5 reason codes 0x85 client id, 0x86 bad user/password, 0x87 not authorised, 0x8C).
_REFUSED_CODES: Final = frozenset({2, 4, 5, 0x85, 0x86, 0x87, 0x8C})


def classify(exc: BaseException, *, was_connected: bool = False) -> MqttFailure:
    """Map an exception that ended a connection attempt (or a connection) to a failure kind."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return MqttFailure.TIMEOUT
    if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc is not None and not was_connected:
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        if code in _REFUSED_CODES:
            return MqttFailure.REFUSED
    if was_connected:
        return MqttFailure.LOST
    text = str(exc)
    if isinstance(exc, OSError) or "Errno" in text or "timed out" in text:
        # aiomqtt turns the OSError of a failed connect into MqttError(str(exc)).
        return MqttFailure.TIMEOUT if "timed out" in text else MqttFailure.UNREACHABLE
    return MqttFailure.OTHER


def backoff_delay(
    kind: MqttFailure, attempt: int, *, rng: random.Random | None = None, jitter: float = 0.1
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` consecutive failures.

    With ``rng``, up to ``jitter`` (a fraction) is added so that a fleet of gateways does not
    reconnect to a restarted broker in lockstep.
    """
    return capped_backoff(BASE_DELAY_S[kind], attempt, rng=rng, jitter=jitter)
