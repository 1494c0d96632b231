"""The wearable's offload policy, mirrored in firmware_stub/: offload a window when it is hard.

A window is hard when its entropy is above tau or the local model is unsure. Both sides decide
on the wire's integers (entropy in milli-bits, confidence in 1/10000), never on floats, so the
gateway can recompute the wearable's decision from a message and get the same flags.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from gatewayd.signals.entropy import entropy_milli_bits

#: Confidence travels as u16 in units of 1/10000.
CONFIDENCE_SCALE: Final = 10000
_U16_MAX: Final = 65535


class OffloadReason(enum.IntFlag):
    """Why a window is offloaded; the values are the OFFLOAD_* flag bits of the message header."""

    NONE = 0
    #: entropy_mbits > tau_mbits
    ENTROPY = 1
    #: confidence_e4 < min_confidence_e4
    LOW_CONFIDENCE = 2


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= _U16_MAX:
        raise ValueError(f"{name} must fit a u16 (0..65535), got {value}")


def decide_offload(
    entropy_milli_bits: int,
    confidence_e4: int,
    tau_milli_bits: int,
    min_confidence_e4: int,
) -> OffloadReason:
    """Return the offload reasons for one window in wire units; offload when non-zero."""
    _check_u16("entropy_milli_bits", entropy_milli_bits)
    _check_u16("confidence_e4", confidence_e4)
    _check_u16("tau_milli_bits", tau_milli_bits)
    _check_u16("min_confidence_e4", min_confidence_e4)
    reason = OffloadReason.NONE
    if entropy_milli_bits > tau_milli_bits:
        reason |= OffloadReason.ENTROPY
    if confidence_e4 < min_confidence_e4:
        reason |= OffloadReason.LOW_CONFIDENCE
    return reason


def confidence_e4(confidence: float) -> int:
    """Return a confidence as 1/10000 units: floor(c * 10000 + 0.5) clamped to 0..10000."""
    if not math.isfinite(confidence):
        raise ValueError(f"confidence must be finite, got {confidence!r}")
    return min(max(math.floor(confidence * CONFIDENCE_SCALE + 0.5), 0), CONFIDENCE_SCALE)


def should_offload(
    entropy_bits: float, confidence: float, tau_bits: float, min_confidence: float
) -> OffloadReason:
    """Float convenience: round to wire units exactly as the wearable does, then decide."""
    return decide_offload(
        entropy_milli_bits(entropy_bits),
        confidence_e4(confidence),
        entropy_milli_bits(tau_bits),
        confidence_e4(min_confidence),
    )
